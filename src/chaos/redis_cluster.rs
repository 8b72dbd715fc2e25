//! A Redis Cluster on loopback for tests and fault runs: masters with one replica each,
//! made with `redis-cli --cluster create` (slots split evenly, as in production), a short
//! node timeout so a failover takes seconds, not the default 15 s. Every node's data and
//! log live in one directory; dropping the cluster kills its nodes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::cluster::{find_on_path, free_port, Backend};

/// How long a node may be silent before the others count it as failed: the larger part of
/// a failover's duration.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(1_000);

pub struct RedisCluster {
    /// Every node, masters first (as created; roles change with failovers).
    pub nodes: Vec<Backend>,
    cli: PathBuf,
}

/// One node as `CLUSTER NODES` reports it.
#[derive(Debug, Clone)]
pub struct Node {
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    /// Slot ranges it serves (masters).
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// `masters` masters (at least 3, as Redis requires) with one replica each, data and
    /// logs under `dir`; answers once every slot is served and every node agrees.
    pub async fn start(dir: &Path, masters: usize) -> anyhow::Result<RedisCluster> {
        let server = find_on_path("redis-server").context("redis-server is not on PATH")?;
        let cli = find_on_path("redis-cli").context("redis-cli is not on PATH")?;
        let mut nodes = Vec::new();
        for i in 0..masters * 2 {
            let node_dir = dir.join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir)?;
            let port = free_port()?;
            let mut node = Backend::redis(&server, port, &node_dir);
            node.add_args(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &NODE_TIMEOUT.as_millis().to_string(),
                // A replica whose master was idle has heard nothing from it for up to the
                // ping period; with the default validity factor it then refuses to take
                // over ("disconnected from master for longer than allowed", seen here
                // after a kill). Fail over whatever the data's age; ping every second.
                "--cluster-replica-validity-factor",
                "0",
                "--repl-ping-replica-period",
                "1",
                // A new replica's first copy starts at once, not after 5 s of waiting for
                // other replicas to share it.
                "--repl-diskless-sync-delay",
                "0",
            ]);
            node.start().await?;
            nodes.push(node);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addresses.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        run_cli(&cli, &create)?;
        let cluster = RedisCluster { nodes, cli };
        cluster
            .until_healthy(Duration::from_secs(30))
            .await
            .context("the new cluster did not settle")?;
        Ok(cluster)
    }

    /// Comma-separated URLs of every node: what `--redis` takes with `--redis-cluster`.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(Backend::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn cli(&self, port: u16, args: &[&str]) -> anyhow::Result<String> {
        let port = port.to_string();
        let mut all = vec!["-h", "127.0.0.1", "-p", &port];
        all.extend_from_slice(args);
        run_cli(&self.cli, &all)
    }

    /// The cluster as the first live node sees it.
    pub fn topology(&self) -> anyhow::Result<Vec<Node>> {
        let mut last = None;
        for n in self.nodes.iter().filter(|n| n.pid().is_some()) {
            match self.cli(n.port, &["cluster", "nodes"]) {
                Ok(text) => return Ok(parse_nodes(&text)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no live node")))
    }

    /// Keys a node holds (`DBSIZE`).
    pub fn keys_on(&self, port: u16) -> anyhow::Result<u64> {
        self.cli(port, &["dbsize"])?
            .trim()
            .parse()
            .context("DBSIZE answer")
    }

    /// Waits until every live node reports `cluster_state:ok`, every slot is served by a
    /// master that has not failed, and every live replica has its copy (a replica still
    /// making its first copy would lose everything if its master died now).
    pub async fn until_healthy(&self, within: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + within;
        loop {
            let ok = self.nodes.iter().filter(|n| n.pid().is_some()).all(|n| {
                self.cli(n.port, &["cluster", "info"])
                    .is_ok_and(|i| i.contains("cluster_state:ok"))
            }) && self.topology().is_ok_and(|t| {
                let served = t
                    .iter()
                    .filter(|n| n.master && !n.failed)
                    .flat_map(|n| n.slots.iter())
                    .map(|(a, b)| usize::from(b - a) + 1)
                    .sum::<usize>();
                let copied = t.iter().filter(|n| !n.master && !n.failed).all(|n| {
                    self.cli(n.port, &["info", "replication"])
                        .is_ok_and(|i| i.contains("master_link_status:up"))
                });
                served == 16_384 && copied
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > until {
                bail!("the cluster is not healthy after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills (SIGKILL) the master serving `slot`; answers its port.
    pub fn kill_master_of(&mut self, slot: u16) -> anyhow::Result<u16> {
        let port = self
            .topology()?
            .into_iter()
            .find(|n| n.master && !n.failed && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .map(|n| n.port)
            .context("no master serves the slot")?;
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .context("the master is not one of ours")?;
        node.kill9();
        Ok(port)
    }

    /// Starts a killed node again (it rejoins as a replica of whoever took its slots).
    pub async fn restart(&mut self, port: u16) -> anyhow::Result<()> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .context("not one of our nodes")?;
        node.restart().await
    }
}

/// Runs redis-cli with `args`; its output, or what it printed when it failed.
fn run_cli(cli: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cli)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running redis-cli")?;
    if !out.status.success() {
        bail!(
            "redis-cli {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch>
/// <state> <slot ranges...>`.
fn parse_nodes(text: &str) -> Vec<Node> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = f
                .get(1)?
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let flags = f.get(2)?;
            let slots = f
                .iter()
                .skip(8)
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|x| (x, x)),
                })
                .collect();
            Some(Node {
                port,
                master: flags.contains("master"),
                failed: flags.contains("fail"),
                slots,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_are_parsed() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 [5461->-67ed2db8]
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@31005 master,fail - 1426238316232 0 5 disconnected 10923 10924-16383
";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 4);
        assert!(!nodes[0].master);
        assert_eq!(nodes[1].slots, vec![(5461, 10922)]);
        assert_eq!(nodes[2].port, 30001);
        assert_eq!(nodes[2].slots, vec![(0, 5460)]);
        assert!(nodes[3].failed && nodes[3].master);
        assert_eq!(nodes[3].slots, vec![(10923, 10923), (10924, 16383)]);
    }
}
