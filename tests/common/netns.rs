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
    }
}
