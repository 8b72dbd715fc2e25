//! Hosts as Linux network namespaces: each has a veth pair whose outer end is on one
//! bridge, and the test's own namespace has an address on the bridge too, so the test
//! reaches every host. Cutting a host off sets its outer veth end down: packets to and from
//! it vanish, as in a real partition (no reset, no error, until timeouts fire). Everything is
//! created with names and addresses of this process's own and removed on drop.

use std::process::Command;

pub struct Host {
    pub name: String,
    pub netns: String,
    pub address: String,
    /// The veth end on the bridge, in the test's namespace.
    outer: String,
}

pub struct Network {
    bridge: String,
    pub hosts: Vec<Host>,
    /// The test's own address on the bridge.
    pub gateway: String,
    /// The far bridge of [`Network::delay`] and the link to it.
    far: Option<(String, super::delay::DelayLink)>,
    tag: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Network {
    /// Creates `names.len()` hosts on a /24 that no interface of this machine uses; an
    /// error says what the machine refused (no root, no network namespaces).
    pub fn create(names: &[&str]) -> Result<Network, String> {
        let tag = format!("{:04x}", std::process::id() & 0xffff);
        let taken = Command::new("ip")
            .args(["-o", "-4", "addr", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .map_err(|e| format!("ip addr: {e}"))?;
        let subnet = (0..250u32)
            .map(|i| format!("10.213.{}", (std::process::id() + i) % 250))
            .find(|s| !taken.contains(&format!("{s}.")))
            .ok_or("no free 10.213.x.0/24 subnet")?;
        let mut net = Network {
            bridge: format!("stb{tag}"),
            hosts: Vec::new(),
            gateway: format!("{subnet}.254"),
            far: None,
            tag: tag.clone(),
        };
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway),
            "dev",
            &net.bridge,
        ])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        for (i, name) in names.iter().enumerate() {
            let host = Host {
                name: name.to_string(),
                netns: format!("st{tag}{name}"),
                address: format!("{subnet}.{}", i + 1),
                outer: format!("stv{tag}{i}"),
            };
            let inner = format!("sti{tag}{i}");
            ip(&["netns", "add", &host.netns])?;
            // Pushed now, so that a failure below still removes the namespace on drop.
            net.hosts.push(host);
            let host = net.hosts.last().expect("just pushed");
            ip(&[
                "link",
                "add",
                &host.outer,
                "type",
                "veth",
                "peer",
                "name",
                &inner,
            ])?;
            ip(&["link", "set", &inner, "netns", &host.netns])?;
            ip(&["link", "set", &host.outer, "master", &net.bridge])?;
            ip(&["link", "set", &host.outer, "up"])?;
            let at = |args: &[&str]| {
                let mut all = vec!["-n", host.netns.as_str()];
                all.extend_from_slice(args);
                ip(&all)
            };
            at(&["link", "set", "lo", "up"])?;
            at(&[
                "addr",
                "add",
                &format!("{}/24", host.address),
                "dev",
                &inner,
            ])?;
            at(&["link", "set", &inner, "up"])?;
        }
        Ok(net)
    }

    /// Runs `program` inside host `i`.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].netns]).arg(program);
        c
    }

    /// Puts hosts `far` behind a link that delays every frame by `delay` each way (see
    /// `delay.rs`): between them and the rest (the other hosts and the test), a round trip
    /// takes `2 × delay` more; among themselves, nothing more. Call once, before traffic.
    pub fn delay(&mut self, far: &[usize], delay: std::time::Duration) -> Result<(), String> {
        let bridge = format!("stc{}", self.tag);
        let (near_tap, far_tap) = (format!("stta{}", self.tag), format!("sttb{}", self.tag));
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        let link = super::delay::DelayLink::start(&near_tap, &far_tap, delay)
            .map_err(|e| format!("delay link: {e}"));
        let link = match link {
            Ok(link) => link,
            Err(e) => {
                let _ = ip(&["link", "del", &bridge]);
                return Err(e);
            }
        };
        self.far = Some((bridge.clone(), link));
        ip(&["link", "set", &near_tap, "master", &self.bridge])?;
        ip(&["link", "set", &far_tap, "master", &bridge])?;
        for dev in [&near_tap, &far_tap, &bridge] {
            ip(&["link", "set", dev, "up"])?;
        }
        for &i in far {
            ip(&["link", "set", &self.hosts[i].outer, "master", &bridge])?;
        }
        Ok(())
    }

    /// Cuts host `i` off from every other host and from the test.
    pub fn cut(&self, i: usize) {
        ip(&["link", "set", &self.hosts[i].outer, "down"]).expect("cut a host off");
    }

    pub fn heal(&self, i: usize) {
        ip(&["link", "set", &self.hosts[i].outer, "up"]).expect("reconnect a host");
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both; the namespace itself goes once
        // nothing holds it any more.
        for h in &self.hosts {
            let _ = ip(&["link", "del", &h.outer]);
            let _ = ip(&["netns", "del", &h.netns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
        // The link's TAP devices go with it.
        if let Some((bridge, link)) = self.far.take() {
            drop(link);
            let _ = ip(&["link", "del", &bridge]);
        }
    }
}
