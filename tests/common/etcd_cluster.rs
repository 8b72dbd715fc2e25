//! An etcd cluster, each member with its own data directory, that a test can kill, freeze
//! (SIGSTOP: a member that holds its connections open and answers nothing, as one behind a
//! partition does) and restart: on loopback, or one member per network namespace.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use starling_discovery::{EtcdConfig, EtcdRegistry};

use super::{eventually, free_port, require_binary};

struct Member {
    name: String,
    /// The address it listens on.
    host: String,
    /// The network namespace it runs in, if not the test's.
    netns: Option<String>,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

pub struct EtcdCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts `size` members on loopback and waits until they have elected a leader.
    pub async fn start(size: usize) -> Option<EtcdCluster> {
        let members = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                host: "127.0.0.1".into(),
                netns: None,
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        Self::start_members(members).await
    }

    /// Starts one member in each network namespace, on that host's address (`(address,
    /// namespace)` pairs), on etcd's usual ports.
    pub async fn start_in(hosts: &[(String, String)]) -> Option<EtcdCluster> {
        let members = hosts
            .iter()
            .enumerate()
            .map(|(i, (host, netns))| Member {
                name: format!("m{i}"),
                host: host.clone(),
                netns: Some(netns.clone()),
                client_port: 2379,
                peer_port: 2380,
                child: None,
            })
            .collect();
        Self::start_members(members).await
    }

    async fn start_members(members: Vec<Member>) -> Option<EtcdCluster> {
        let bin = require_binary("etcd")?;
        let loopback = members.iter().all(|m| m.netns.is_none());
        let mut cluster = EtcdCluster {
            bin,
            dir: tempfile::tempdir().expect("temp dir"),
            members,
        };
        // A free port can be taken by another process before etcd binds it: then the
        // cluster is started again on other ports (on loopback; a namespace's ports are
        // its own).
        for attempt in 1..=3 {
            for i in 0..cluster.members.len() {
                cluster.spawn(i);
            }
            let all_up = eventually(Duration::from_secs(20), || async {
                cluster.leader().await.is_some() && cluster.all_answer().await
            })
            .await;
            if all_up {
                return Some(cluster);
            }
            assert!(
                loopback && attempt < 3,
                "the etcd cluster did not start; logs in {}",
                cluster.dir.path().display()
            );
            for i in 0..cluster.members.len() {
                cluster.kill(i);
                let _ = std::fs::remove_dir_all(cluster.dir.path().join(&cluster.members[i].name));
                cluster.members[i].client_port = free_port();
                cluster.members[i].peer_port = free_port();
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Whether every member answers a status request.
    async fn all_answer(&self) -> bool {
        for i in 0..self.members.len() {
            let status = async {
                let mut c = etcd_client::Client::connect([self.url(i)], None)
                    .await
                    .ok()?;
                c.status().await.ok()
            };
            if !matches!(
                tokio::time::timeout(Duration::from_millis(500), status).await,
                Ok(Some(_))
            ) {
                return false;
            }
        }
        true
    }

    pub fn url(&self, i: usize) -> String {
        let m = &self.members[i];
        format!("http://{}:{}", m.host, m.client_port)
    }

    /// Every member's client URL, comma-separated (as `--etcd` takes them).
    pub fn urls(&self) -> String {
        (0..self.members.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}:{}", m.name, m.host, m.peer_port))
            .collect();
        let client = self.url(i);
        let m = &self.members[i];
        let peer = format!("http://{}:{}", m.host, m.peer_port);
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))
            .expect("log file");
        let mut command = match &m.netns {
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        let child = command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(self.dir.path().join(&m.name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-token", "starling-test"])
            // etcd's defaults (100 ms heartbeat, 1 s election timeout), written out because
            // the failover times the tests measure follow from them.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            // A member that comes back from a partition does not depose the leader with
            // the higher term it reached alone (etcd 3.5's default; 3.4's is off).
            .arg("--pre-vote")
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.members[i].child = Some(child);
    }

    /// The index of the member that is leader, as the live members report it.
    pub async fn leader(&self) -> Option<usize> {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            let status = async {
                let mut c = etcd_client::Client::connect([self.url(i)], None)
                    .await
                    .ok()?;
                let s = c.status().await.ok()?;
                Some((s.header()?.member_id(), s.leader()))
            };
            let Ok(Some((me, leader))) =
                tokio::time::timeout(Duration::from_millis(500), status).await
            else {
                continue;
            };
            if leader != 0 && me == leader {
                return Some(i);
            }
        }
        None
    }

    /// Makes member `to` the leader (etcd's move-leader, asked of the current leader).
    pub async fn move_leader(&self, to: usize) {
        let member_id = |i: usize| async move {
            let mut c = etcd_client::Client::connect([self.url(i)], None)
                .await
                .ok()?;
            Some(c.status().await.ok()?.header()?.member_id())
        };
        for _ in 0..20 {
            let Some(leader) = self.leader().await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if leader == to {
                return;
            }
            let target = member_id(to).await.expect("the target member answers");
            if let Ok(mut c) = etcd_client::Client::connect([self.url(leader)], None).await {
                let _ = c.move_leader(target).await;
            }
        }
        panic!("member {to} did not become the leader");
    }

    /// Waits for a leader among the live members; how long that took.
    pub async fn await_leader(&self, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        assert!(
            eventually(timeout, || async { self.leader().await.is_some() }).await,
            "no etcd leader within {timeout:?}"
        );
        t0.elapsed()
    }

    /// SIGKILL one member.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, i: usize, signal: &str) {
        let Some(child) = &self.members[i].child else {
            return;
        };
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// SIGSTOP: the member keeps its connections and answers nothing.
    pub fn freeze(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    pub fn thaw(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    /// Starts a killed member again on its ports and data: it rejoins the cluster.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// A registry over every member.
    pub async fn registry(&self, namespace: &str, lease_ttl: Duration) -> EtcdRegistry {
        let mut config = EtcdConfig::new(self.urls().split(',').map(String::from).collect());
        config.namespace = namespace.to_string();
        config.lease_ttl = lease_ttl;
        config.request_timeout = Duration::from_secs(1);
        config.relist_grace = lease_ttl * 3;
        config.claim_ttl = Duration::from_secs(6);
        EtcdRegistry::connect(config).await.expect("etcd client")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // SIGKILL ends a frozen process too.
        for i in 0..self.members.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            for m in &self.members {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", m.name)))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                eprintln!("--- etcd member {} (last lines) ---", m.name);
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}
