//! A link that delays every frame by a fixed time, both ways: two TAP devices, one on each
//! of two bridges, and a thread per direction that reads a frame from one and writes it to
//! the other once its time has come. It stands in for `tc qdisc ... netem delay`, which this
//! machine's kernel lacks ("Specified qdisc kind is unknown"; `fq`, which could honour
//! departure times, is missing too). Frames keep their order; nothing is dropped.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct DelayLink {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Opens (and so creates) the TAP device `name`; it goes when the file is closed.
fn open_tap(name: &str) -> std::io::Result<File> {
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    if name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::other(format!(
            "interface name {name:?} too long"
        )));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `IfReq` lays out (name,
    // flags, and the rest of the union as padding); `req` outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Waits up to 100 ms for `file` to be readable.
fn readable(file: &File) -> bool {
    let mut fd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    unsafe { libc::poll(&mut fd, 1, 100) > 0 && fd.revents & libc::POLLIN != 0 }
}

impl DelayLink {
    /// Creates TAP devices `a` and `b` and starts moving frames between them, each `delay`
    /// after it was read. The caller puts the devices on their bridges and sets them up.
    pub fn start(a: &str, b: &str, delay: Duration) -> std::io::Result<DelayLink> {
        let (tap_a, tap_b) = (open_tap(a)?, open_tap(b)?);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (from, to) in [(tap_a.try_clone()?, tap_b.try_clone()?), (tap_b, tap_a)] {
            let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let reading = stop.clone();
            let mut from = from;
            threads.push(std::thread::spawn(move || {
                let mut frame = vec![0u8; 65_536];
                while !reading.load(Ordering::Relaxed) {
                    if !readable(&from) {
                        continue;
                    }
                    if let Ok(n @ 1..) = from.read(&mut frame) {
                        if tx
                            .send((Instant::now() + delay, frame[..n].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }));
            let writing = stop.clone();
            let mut to = to;
            threads.push(std::thread::spawn(move || loop {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok((due, frame)) => {
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        // A frame the device refuses (it is down: a host cut off) is lost,
                        // as on a wire.
                        let _ = to.write(&frame);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) if !writing.load(Ordering::Relaxed) => {}
                    Err(_) => return,
                }
            }));
        }
        Ok(DelayLink { stop, threads })
    }
}

impl Drop for DelayLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
