//! The production store: Redis through a deadpool connection pool. All keys get the
//! configured prefix, so several deployments (or test runs) can share one Redis.
//!
//! Connections are redis-rs multiplexed connections: one carries any number of concurrent
//! requests. deadpool's checkout, though, validates each connection with an `UNWATCH` +
//! `PING` round trip, which would double the cost of every command. So the store keeps one
//! checked-out connection and clones its multiplexed handle per command, and goes back to
//! the pool (which replaces broken connections) only when that connection fails.
//!
//! **Redis restarts.** The shared connection dies with the server, and nothing tells it so
//! until a command fails on it: without care, the first command after every restart would
//! fail. So a watcher pings the shared connection every second and retires it when it is
//! dead, and a read that meets a dropped connection is sent once more on a fresh one (a
//! read is safe to repeat; a write that may have reached the old server is not repeated).
//!
//! **Redis Cluster** ([`RedisStore::connect_cluster`]). The same commands go through the
//! redis crate's cluster connection, which sends each to the master of its key's slot,
//! follows slots that move and retries through a failover. Two things differ: a pipelined
//! batch is split per master (by the slot map, `CLUSTER SLOTS`) and the parts run in
//! parallel ([`Store::apply`]), what a master refuses going again slot by slot; and an
//! atomic step must stay in one slot, which every store enforces (see `slot`). A step the
//! cluster refused whole after a failover (MOVED) is sent again once the client has
//! followed the move. The redis crate retries a command whose connection failed, so on a
//! cluster a write whose answer was lost may be applied twice (a duplicate outbox event,
//! which consumers tolerate; a popularity increment counted twice). Blocking reads get
//! cluster connections of their own, and a subscription is a plain connection to one node.
//!
//! **TLS and passwords.** `rediss://` URLs connect over TLS (rustls), checking the server
//! against the CA given to [`RedisStore::connect_with_ca`] (the system's roots otherwise);
//! a password goes in the URL (`rediss://:PASSWORD@host:port`, or `user:PASSWORD@` for an
//! ACL user) and never into a log or error message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::cluster::{ClusterClient, ClusterClientBuilder};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use deadpool_redis::redis::io::tcp::TcpSettings;
use deadpool_redis::redis::{ConnectionInfo, IntoConnectionInfo};
use deadpool_redis::{redis, Manager, Pool, Runtime};
use futures::StreamExt as _;

use super::slot::hash_slot;
use super::{Lex, Store, StoreError, StoreResult, StreamEntry, Write};

/// Commands per pipeline round trip: large enough to amortise the round trip, small enough
/// that one batch does not monopolise Redis for long.
const PIPELINE_CHUNK: usize = 10_000;

/// Per-slot pipelines of one batch in flight at once on a Redis Cluster.
const SLOTS_IN_FLIGHT: usize = 64;

/// How long a Redis Cluster command may wait for its answer. A command to a master that
/// died is retried (by the redis crate) once the cluster has promoted its replica.
const CLUSTER_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Blocking commands in flight at once, each on a connection of its own: XREAD BLOCK (one
/// per outbox stream a process relays, `outbox::SHARDS` per service it runs) and writes
/// that wait for replicas ([`RedisStore::with_replica_acks`]).
const BLOCKING_READS: usize = 64;

/// Times an atomic step refused whole by a cluster (EXECABORT) is sent again after the
/// client has followed the slot's move (see `apply_atomic`).
const EXECABORT_RETRIES: u32 = 3;

/// The longest blocking read the cluster's blocking connections allow for.
const CLUSTER_BLOCK_LIMIT: Duration = Duration::from_secs(30);

/// How long a write waits for its replicas ([`RedisStore::with_replica_acks`]).
pub const REPLICA_ACK_TIMEOUT: Duration = Duration::from_millis(400);

#[derive(Clone)]
pub struct RedisStore {
    backend: Backend,
    prefix: String,
    /// Replicas that must hold a write before it is acknowledged (see
    /// [`RedisStore::with_replica_acks`]); 0: the master's answer is enough.
    replica_acks: usize,
    /// The connection in use (see the module docs).
    current: Arc<Mutex<Option<Pooled>>>,
}

/// One Redis, or a Redis Cluster.
#[derive(Clone)]
enum Backend {
    Single {
        pool: Pool,
        /// Connections for blocking reads, apart from the commands' pool.
        blocking: Pool,
        /// Subscriptions need a connection of their own each (pub/sub mode), outside the
        /// pool. (Boxed: a client is large, and the store is cloned into many tasks.)
        client: Box<redis::Client>,
    },
    Cluster {
        pool: ClusterPool,
        /// Connections for blocking reads, which wait longer than a command may.
        blocking: ClusterPool,
        /// The seed nodes: a subscription is a plain connection to one of them (a cluster
        /// forwards every PUBLISH to all its nodes).
        seeds: Vec<ConnectionInfo>,
        /// Which master serves which slots, as last read, for sending a batch per node.
        masters: Arc<Mutex<Option<Masters>>>,
    },
}

/// The masters of a cluster's slot ranges (`CLUSTER SLOTS`), and when that was read.
#[derive(Clone)]
struct Masters {
    read_at: std::time::Instant,
    ranges: Arc<Vec<(u16, u16, String, u16)>>,
}

/// How long a read slot map is trusted before it is read again (a move shows sooner: a
/// write it misroutes is refused and sent again by slot, and the map is dropped).
const MASTERS_TTL: Duration = Duration::from_secs(5);

/// A pooled connection, kept while its handle is in use.
enum Pooled {
    Single(deadpool_redis::Connection),
    Cluster(deadpool::managed::Object<ClusterManager>),
}

impl Pooled {
    fn handle(&self) -> Conn {
        match self {
            Pooled::Single(c) => Conn::Single((**c).clone()),
            Pooled::Cluster(c) => Conn::Cluster((**c).clone()),
        }
    }
}

/// A multiplexed handle on one Redis or on a cluster: commands are written once for both.
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Makes and checks Redis Cluster connections for a deadpool pool (deadpool-redis's own
/// cluster manager leaves Nagle's algorithm on and takes no response timeout).
struct ClusterManager {
    client: ClusterClient,
}

type ClusterPool = deadpool::managed::Pool<ClusterManager>;

impl deadpool::managed::Manager for ClusterManager {
    type Type = ClusterConnection;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<ClusterConnection, redis::RedisError> {
        self.client.get_async_connection().await
    }

    async fn recycle(
        &self,
        conn: &mut ClusterConnection,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<redis::RedisError> {
        ping(&mut Conn::Cluster(conn.clone())).await?;
        Ok(())
    }
}

/// PING one node: on a cluster, any master (the redis crate would ask every node, and a
/// lost replica would then make the whole store look down).
async fn ping(c: &mut Conn) -> redis::RedisResult<()> {
    match c {
        Conn::Single(c) => redis::cmd("PING").query_async::<String>(c).await.map(drop),
        Conn::Cluster(c) => c
            .route_command(
                redis::cmd("PING"),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
            )
            .await
            .map(drop),
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("cluster", &matches!(self.backend, Backend::Cluster { .. }))
            .finish()
    }
}

fn err(key: &str, e: redis::RedisError) -> StoreError {
    if e.code() == Some("WRONGTYPE") {
        StoreError::WrongType(key.to_string())
    } else {
        StoreError::Redis(e.to_string())
    }
}

/// Parses a Redis URL into connection info with TCP_NODELAY, trusting `ca_pem` for TLS.
/// A URL the redis crate refused, named without its password.
fn bad_url(url: &str, e: &dyn std::fmt::Display) -> StoreError {
    StoreError::Redis(format!(
        "bad redis url {}: {}",
        redacted(url),
        redact_in(&e.to_string(), url)
    ))
}

fn connection_info(url: &str, ca_pem: Option<&[u8]>) -> StoreResult<ConnectionInfo> {
    let shown = redacted(url);
    let bad = |e: &dyn std::fmt::Display| bad_url(url, e);
    // redis-rs leaves Nagle's algorithm on by default: small requests then wait for
    // delayed ACKs (~40 ms stalls, seen in `starling bench fanout`). Turn it off.
    let mut info = url
        .into_connection_info()
        .map_err(|e| bad(&e))?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    if let Some(ca) = ca_pem {
        if !url.starts_with("rediss://") {
            return Err(StoreError::Redis(format!(
                "a CA for redis was given but {shown} is not a rediss:// (TLS) URL"
            )));
        }
        // The client made with the certificates carries them in its connection info.
        info = redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.to_vec()),
            },
        )
        .map_err(|e| bad(&e))?
        .get_connection_info()
        .clone();
    }
    Ok(info)
}

impl RedisStore {
    /// `url` like `redis://127.0.0.1:6379`; `prefix` is prepended to every key. Checks the
    /// server answers.
    pub async fn connect(url: &str, prefix: &str, pool_size: usize) -> StoreResult<Self> {
        Self::connect_with_ca(url, prefix, pool_size, None).await
    }

    /// [`RedisStore::connect`], trusting the CA certificate `ca_pem` for a `rediss://` URL.
    pub async fn connect_with_ca(
        url: &str,
        prefix: &str,
        pool_size: usize,
        ca_pem: Option<Vec<u8>>,
    ) -> StoreResult<Self> {
        let shown = redacted(url);
        let info = connection_info(url, ca_pem.as_deref())?;
        let bad = |e: &dyn std::fmt::Display| bad_url(url, e);
        let client = redis::Client::open(info.clone()).map_err(|e| bad(&e))?;
        let build = |size: usize| {
            Pool::builder(Manager::new(info.clone()).map_err(|e| bad(&e))?)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .build()
                .map_err(|e| bad(&e))
        };
        let store = Self {
            backend: Backend::Single {
                // One connection is shared by every command; the others replace it when
                // it dies.
                pool: build(pool_size.max(2))?,
                blocking: build(BLOCKING_READS)?,
                client: Box::new(client),
            },
            prefix: prefix.to_string(),
            replica_acks: 0,
            current: Arc::new(Mutex::new(None)),
        };
        store.check_answers(&shown).await?;
        tokio::spawn(retire_dead_connections(Arc::downgrade(&store.current)));
        Ok(store)
    }

    /// A Redis Cluster, found through `seeds` (comma-separated URLs of some of its nodes);
    /// otherwise as [`RedisStore::connect_with_ca`]. Commands go to the master of their
    /// key's slot; the redis crate follows MOVED answers and retries through a failover.
    pub async fn connect_cluster(
        seeds: &str,
        prefix: &str,
        pool_size: usize,
        ca_pem: Option<Vec<u8>>,
    ) -> StoreResult<Self> {
        let shown: Vec<String> = seeds.split(',').map(|u| redacted(u.trim())).collect();
        let shown = shown.join(",");
        if prefix.contains(['{', '}']) {
            return Err(StoreError::Redis(format!(
                "the key prefix {prefix:?} holds a brace: on a Redis Cluster it would \
                 become the hash tag of every key"
            )));
        }
        let infos = seeds
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| connection_info(u, ca_pem.as_deref()))
            .collect::<StoreResult<Vec<_>>>()?;
        if infos.is_empty() {
            return Err(StoreError::Redis("no redis cluster node given".into()));
        }
        let build = |response_timeout: Duration, size: usize| {
            let mut builder = ClusterClientBuilder::new(infos.clone())
                .tcp_settings(TcpSettings::default().set_nodelay(true))
                .connection_timeout(Duration::from_secs(1))
                .response_timeout(response_timeout)
                // A failover takes the cluster a few node timeouts: keep retrying
                // (with backoff up to 1 s) for about that long rather than failing.
                .retries(8)
                .max_retry_wait(1_000);
            if let Some(ca) = &ca_pem {
                builder = builder.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                });
            }
            let client = builder
                .build()
                .map_err(|e| StoreError::Redis(format!("bad redis cluster nodes {shown}: {e}")))?;
            ClusterPool::builder(ClusterManager { client })
                .max_size(size)
                .runtime(deadpool::Runtime::Tokio1)
                .build()
                .map_err(|e| StoreError::Redis(format!("redis cluster pool: {e}")))
        };
        let store = Self {
            backend: Backend::Cluster {
                pool: build(CLUSTER_RESPONSE_TIMEOUT, pool_size.max(2))?,
                blocking: build(CLUSTER_BLOCK_LIMIT + Duration::from_secs(2), BLOCKING_READS)?,
                seeds: infos,
                masters: Arc::default(),
            },
            prefix: prefix.to_string(),
            replica_acks: 0,
            current: Arc::new(Mutex::new(None)),
        };
        store.check_answers(&shown).await?;
        Ok(store)
    }

    /// Acknowledges a write only once `replicas` replicas of its master hold it (Redis
    /// `WAIT`, up to [`REPLICA_ACK_TIMEOUT`]); otherwise the write fails, though the master
    /// may have applied it (as with any timeout: a caller retries with its idempotency
    /// key). Redis replicates asynchronously, so without this a master that dies right
    /// after acknowledging a write can take the write with it when its replica takes over.
    /// The price: while a master has fewer live replicas than this (after a failover, until
    /// the old master returns as a replica), writes to its slots fail.
    pub fn with_replica_acks(mut self, replicas: usize) -> Self {
        self.replica_acks = replicas;
        self
    }

    /// The connection for a write: the shared one, or, when writes wait for replicas, one
    /// of its own (from the blocking reads' pool), on which the write and its WAIT go: a
    /// WAIT blocks its connection, and every command queued behind it on the shared one
    /// would wait too. Keep the pooled object until the WAIT is answered.
    async fn write_conn(&self) -> StoreResult<(Option<Pooled>, Conn)> {
        if self.replica_acks == 0 {
            return Ok((None, self.conn().await?));
        }
        let (pooled, conn) = self.blocking_conn(REPLICA_ACK_TIMEOUT).await?;
        Ok((Some(pooled), conn))
    }

    /// Waits until the writes sent so far on `c` to the master of `key` are on
    /// [`Self::with_replica_acks`] replicas (nothing to do when that is 0).
    async fn replicated(&self, c: &mut Conn, key: &str) -> StoreResult<()> {
        // On a cluster, the master of the key's slot, on the connection the writes went
        // over.
        let master = SingleNodeRoutingInfo::SpecificNode(Route::new(
            hash_slot(self.k(key).as_bytes()),
            SlotAddr::Master,
        ));
        self.replicated_at(c, master, &format!("a write to {key:?}"))
            .await
    }

    /// [`Self::replicated`] for the writes sent to the node `node` picks (on one Redis,
    /// the connection's own server); `what` names them in the error.
    async fn replicated_at(
        &self,
        c: &mut Conn,
        node: SingleNodeRoutingInfo,
        what: &str,
    ) -> StoreResult<()> {
        if self.replica_acks == 0 {
            return Ok(());
        }
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(self.replica_acks)
            .arg(REPLICA_ACK_TIMEOUT.as_millis() as u64);
        let got: redis::RedisResult<i64> = match c {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => c
                .route_command(cmd, RoutingInfo::SingleNode(node))
                .await
                .and_then(|v| redis::from_redis_value(v).map_err(redis::RedisError::from)),
        };
        let got = got.map_err(|e| self.fail(what, e))?;
        if (got.max(0) as usize) < self.replica_acks {
            return Err(StoreError::Redis(format!(
                "{what} reached {got} of the {} replicas required within \
                 {REPLICA_ACK_TIMEOUT:?}; not acknowledged",
                self.replica_acks
            )));
        }
        Ok(())
    }

    fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster { .. })
    }

    async fn check_answers(&self, shown: &str) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        ping(&mut conn)
            .await
            .map_err(|e| StoreError::Redis(format!("redis at {shown} does not answer: {e}")))
    }

    /// Runs a read-only command; if the shared connection turns out to be dead (Redis
    /// restarted), once more on a fresh one.
    async fn read<T: redis::FromRedisValue>(&self, key: &str, cmd: &redis::Cmd) -> StoreResult<T> {
        let mut c = self.conn().await?;
        match cmd.query_async(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) if e.is_connection_dropped() => {
                let _ = self.fail(key, e);
                let mut c = self.conn().await?;
                cmd.query_async(&mut c).await.map_err(|e| self.fail(key, e))
            }
            Err(e) => Err(self.fail(key, e)),
        }
    }

    async fn conn(&self) -> StoreResult<Conn> {
        if let Some(c) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Ok(c.handle());
        }
        let fresh = match &self.backend {
            Backend::Single { pool, .. } => Pooled::Single(
                pool.get()
                    .await
                    .map_err(|e| StoreError::Redis(format!("no redis connection: {e}")))?,
            ),
            Backend::Cluster { pool, .. } => Pooled::Cluster(
                pool.get()
                    .await
                    .map_err(|e| StoreError::Redis(format!("no redis cluster connection: {e}")))?,
            ),
        };
        let handle = fresh.handle();
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh);
        Ok(handle)
    }

    /// Maps an error, and drops the current connection if it is broken, so the next
    /// command takes a validated one from the pool. (A cluster connection mends itself:
    /// it reconnects to nodes and follows the slots when they move.)
    fn fail(&self, key: &str, e: redis::RedisError) -> StoreError {
        if !self.is_cluster()
            && (e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout())
        {
            self.current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
        }
        err(key, e)
    }

    fn k(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn write_cmd(&self, w: &Write) -> redis::Cmd {
        let mut cmd;
        match w {
            Write::Set { key, value } => {
                cmd = redis::cmd("SET");
                cmd.arg(self.k(key)).arg(value);
            }
            Write::Del { key } => {
                cmd = redis::cmd("DEL");
                cmd.arg(self.k(key));
            }
            Write::ZAdd { key, member } => {
                cmd = redis::cmd("ZADD");
                cmd.arg(self.k(key)).arg(0).arg(member);
            }
            Write::ZRem { key, member } => {
                cmd = redis::cmd("ZREM");
                cmd.arg(self.k(key)).arg(member);
            }
            Write::ZKeepLast { key, keep } | Write::ZKeepTop { key, keep } => {
                cmd = redis::cmd("ZREMRANGEBYRANK");
                cmd.arg(self.k(key)).arg(0).arg(-(*keep as i64) - 1);
            }
            Write::ZIncr { key, member, delta } => {
                cmd = redis::cmd("ZINCRBY");
                cmd.arg(self.k(key)).arg(*delta).arg(member);
            }
            Write::HSet { key, field, value } => {
                cmd = redis::cmd("HSET");
                cmd.arg(self.k(key)).arg(field).arg(value);
            }
            Write::HDel { key, field } => {
                cmd = redis::cmd("HDEL");
                cmd.arg(self.k(key)).arg(field);
            }
            Write::XAdd { key, fields } => {
                cmd = redis::cmd("XADD");
                cmd.arg(self.k(key)).arg("*");
                for (f, v) in fields {
                    cmd.arg(f).arg(v);
                }
            }
            Write::XDel { key, id } => {
                cmd = redis::cmd("XDEL");
                cmd.arg(self.k(key)).arg(id);
            }
            Write::XTrimBefore { key, min_ms } => {
                cmd = redis::cmd("XTRIM");
                cmd.arg(self.k(key)).arg("MINID").arg(*min_ms);
            }
        }
        cmd
    }

    /// A connection of its own for a blocking command (XREAD BLOCK), which would hold up
    /// every other request on the shared multiplexed connection.
    /// The pooled object must be kept until the command is answered, so the pool does not
    /// hand the same socket to anyone else meanwhile.
    async fn blocking_conn(&self, block: Duration) -> StoreResult<(Pooled, Conn)> {
        let no_free = || StoreError::Redis("no free redis connection within 2 s".into());
        let pooled = match &self.backend {
            Backend::Single { blocking, .. } => Pooled::Single(
                tokio::time::timeout(Duration::from_secs(2), blocking.get())
                    .await
                    .map_err(|_| no_free())?
                    .map_err(|e| StoreError::Redis(format!("no redis connection: {e}")))?,
            ),
            Backend::Cluster { blocking, .. } => {
                if block > CLUSTER_BLOCK_LIMIT {
                    return Err(StoreError::Redis(format!(
                        "a blocking read of {block:?} is longer than the {CLUSTER_BLOCK_LIMIT:?} \
                         a cluster connection waits"
                    )));
                }
                Pooled::Cluster(
                    tokio::time::timeout(Duration::from_secs(2), blocking.get())
                        .await
                        .map_err(|_| no_free())?
                        .map_err(|e| {
                            StoreError::Redis(format!("no redis cluster connection: {e}"))
                        })?,
                )
            }
        };
        let mut handle = pooled.handle();
        if let Conn::Single(c) = &mut handle {
            // The default response timeout (500 ms) would cut a longer block short.
            c.set_response_timeout(block + Duration::from_secs(2));
        }
        Ok((pooled, handle))
    }

    /// Sends a pipelined batch. On a cluster, a pipeline must stay in one slot: the batch
    /// is split per slot (keeping each key's writes in order) and the parts run in
    /// parallel, so a fan-out spreads over the masters.
    async fn pipelined(&self, writes: &[Write]) -> StoreResult<()> {
        let (_held, mut c) = self.write_conn().await?;
        if !self.is_cluster() {
            for chunk in writes.chunks(PIPELINE_CHUNK) {
                let pipe = self.pipeline(chunk.iter());
                self.send_pipeline(&mut c, pipe).await?;
            }
            return match writes.first() {
                Some(w) => self.replicated(&mut c, w.key()).await,
                None => Ok(()),
            };
        }
        let Conn::Cluster(cluster) = &c else {
            return self.per_slot(&c, writes.iter().collect()).await;
        };
        // One pipeline per master, in parallel; what a master refuses (a slot that moved
        // since the map was read) goes again slot by slot, routed by the redis crate.
        let masters = self.masters(cluster).await;
        // Indices into `writes` (a closure over borrowed writes trips async-trait's
        // lifetimes).
        let mut by_node: HashMap<(String, u16), Vec<usize>> = HashMap::new();
        let mut unplaced: Vec<usize> = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            let slot = hash_slot(self.k(w.key()).as_bytes());
            match masters.as_ref().and_then(|m| master_of(m, slot)) {
                Some(node) => by_node.entry(node).or_default().push(i),
                None => unplaced.push(i),
            }
        }
        let mut parts: Vec<((String, u16), Vec<usize>)> = Vec::new();
        for (node, ws) in by_node {
            for chunk in ws.chunks(PIPELINE_CHUNK) {
                parts.push((node.clone(), chunk.to_vec()));
            }
        }
        let mut sends = futures::stream::iter(parts.into_iter().map(|(node, part)| {
            let mut c = cluster.clone();
            async move { self.to_node(&mut c, node, writes, part).await }
        }))
        .buffer_unordered(SLOTS_IN_FLIGHT);
        let mut first_error = None;
        while let Some(sent) = sends.next().await {
            match sent {
                Ok(refused) => unplaced.extend(refused),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        drop(sends);
        if first_error.is_some() || !unplaced.is_empty() {
            self.forget_masters();
        }
        if !unplaced.is_empty() {
            let resend = unplaced.iter().map(|&i| &writes[i]).collect();
            if let Err(e) = self.per_slot(&c, resend).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Sends `writes[part]` as one pipeline to the master at `node` and waits for its
    /// replicas; answers the indices of the writes it refused.
    async fn to_node(
        &self,
        c: &mut ClusterConnection,
        (host, port): (String, u16),
        writes: &[Write],
        part: Vec<usize>,
    ) -> StoreResult<Vec<usize>> {
        let mut pipe = redis::pipe();
        for &i in &part {
            pipe.add_command(self.write_cmd(&writes[i]));
        }
        let route = || SingleNodeRoutingInfo::ByAddress {
            host: host.clone(),
            port,
        };
        let answers = match c.route_pipeline(pipe, 0, part.len(), route()).await {
            Ok(answers) => answers,
            // Nothing was sent: the crate holds no connection to that node (the map names
            // a node it has not met yet). They go slot by slot.
            Err(e) if e.kind() == redis::ErrorKind::ClusterConnectionNotFound => return Ok(part),
            Err(e) => return Err(self.fail("<pipeline>", e)),
        };
        let refused: Vec<usize> = part
            .iter()
            .zip(&answers)
            .filter(|(_, a)| matches!(a, redis::Value::ServerError(_)))
            .map(|(&i, _)| i)
            .collect();
        if self.replica_acks > 0 && refused.len() < part.len() {
            self.replicated_at(
                &mut Conn::Cluster(c.clone()),
                route(),
                &format!("writes to {host}:{port}"),
            )
            .await?;
        }
        Ok(refused)
    }

    /// Sends `writes` as one pipeline per slot (the redis crate routes each, following
    /// moves), in parallel.
    async fn per_slot(&self, c: &Conn, writes: Vec<&Write>) -> StoreResult<()> {
        let mut by_slot: HashMap<u16, Vec<&Write>> = HashMap::new();
        for w in writes {
            by_slot
                .entry(hash_slot(self.k(w.key()).as_bytes()))
                .or_default()
                .push(w);
        }
        let mut pipes = Vec::new();
        for part in by_slot.values() {
            for chunk in part.chunks(PIPELINE_CHUNK) {
                pipes.push((
                    chunk[0].key().to_string(),
                    self.pipeline(chunk.iter().copied()),
                ));
            }
        }
        let mut sends = futures::stream::iter(pipes.into_iter().map(|(key, pipe)| {
            let mut c = c.clone();
            async move {
                self.send_pipeline(&mut c, pipe).await?;
                self.replicated(&mut c, &key).await
            }
        }))
        .buffer_unordered(SLOTS_IN_FLIGHT);
        let mut first_error = None;
        while let Some(sent) = sends.next().await {
            if let Err(e) = sent {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The cluster's slot map, read again when older than [`MASTERS_TTL`]; `None` if it
    /// cannot be read (the batch then goes slot by slot).
    async fn masters(&self, c: &ClusterConnection) -> Option<Masters> {
        let Backend::Cluster { masters, .. } = &self.backend else {
            return None;
        };
        let cached = masters.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(m) = cached.filter(|m| m.read_at.elapsed() < MASTERS_TTL) {
            return Some(m);
        }
        let reply = c
            .clone()
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
            )
            .await
            .ok()?;
        let fresh = Masters {
            read_at: std::time::Instant::now(),
            ranges: Arc::new(parse_cluster_slots(reply)),
        };
        *masters.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh.clone());
        Some(fresh)
    }

    fn forget_masters(&self) {
        if let Backend::Cluster { masters, .. } = &self.backend {
            masters.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
    }

    fn pipeline<'w>(&self, writes: impl Iterator<Item = &'w Write>) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for w in writes {
            pipe.add_command(self.write_cmd(w)).ignore();
        }
        pipe
    }

    async fn send_pipeline(&self, c: &mut Conn, pipe: redis::Pipeline) -> StoreResult<()> {
        pipe.query_async::<()>(c)
            .await
            .map_err(|e| self.fail("<pipeline>", e))
    }
}

/// Every second, pings the store's shared connection and retires it if it is dead, so
/// the next command takes a fresh one (see the module docs). Ends with the store.
async fn retire_dead_connections(current: std::sync::Weak<Mutex<Option<Pooled>>>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(shared) = current.upgrade() else {
            return;
        };
        let handle = shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Pooled::handle);
        drop(shared);
        let Some(mut handle) = handle else {
            continue;
        };
        let dead = match ping(&mut handle).await {
            Ok(()) => false,
            Err(e) => e.is_connection_dropped() || e.is_io_error(),
        };
        if dead {
            if let Some(shared) = current.upgrade() {
                shared.lock().unwrap_or_else(|e| e.into_inner()).take();
            }
        }
    }
}

/// The master (host, port) that serves `slot`, by the map.
fn master_of(masters: &Masters, slot: u16) -> Option<(String, u16)> {
    masters
        .ranges
        .iter()
        .find(|(start, end, _, _)| *start <= slot && slot <= *end)
        .map(|(_, _, host, port)| (host.clone(), *port))
}

/// `CLUSTER SLOTS`: `[[start, end, [host, port, id, ...], replicas...], ...]`.
fn parse_cluster_slots(reply: redis::Value) -> Vec<(u16, u16, String, u16)> {
    use redis::Value;
    let int = |v: &Value| match v {
        Value::Int(i) => u16::try_from(*i).ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    ranges
        .iter()
        .filter_map(|r| {
            let Value::Array(r) = r else { return None };
            let Value::Array(master) = r.get(2)? else {
                return None;
            };
            let host = text(master.first()?)?;
            if host.is_empty() || host == "?" {
                return None;
            }
            Some((
                int(r.first()?)?,
                int(r.get(1)?)?,
                host,
                int(master.get(1)?)?,
            ))
        })
        .collect()
}

/// Entries of an XREAD reply (RESP2 arrays or RESP3 maps), for one stream.
fn stream_entries(reply: redis::Value) -> Vec<StreamEntry> {
    use redis::Value;
    fn items(v: Value) -> Vec<Value> {
        match v {
            Value::Array(a) | Value::Set(a) => a,
            Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => Vec::new(),
        }
    }
    fn bytes(v: Value) -> Option<Vec<u8>> {
        match v {
            Value::BulkString(b) => Some(b),
            Value::SimpleString(s) => Some(s.into_bytes()),
            Value::VerbatimString { text, .. } => Some(text.into_bytes()),
            _ => None,
        }
    }
    let mut out = Vec::new();
    // [[stream, [[id, [f, v, ...]], ...]], ...] or {stream: [[id, [f, v, ...]], ...]}
    let streams = items(reply);
    let mut it = streams.into_iter();
    let mut pairs = Vec::new();
    while let Some(first) = it.next() {
        match first {
            Value::Array(pair) if pair.len() == 2 => pairs.push(pair),
            other => {
                if let Some(entries) = it.next() {
                    pairs.push(vec![other, entries]);
                }
            }
        }
    }
    for mut pair in pairs {
        let entries = pair.pop().map(items).unwrap_or_default();
        for entry in entries {
            let mut parts = items(entry).into_iter();
            let Some(id) = parts.next().and_then(bytes) else {
                continue;
            };
            let mut fields = Vec::new();
            let mut kv = parts.next().map(items).unwrap_or_default().into_iter();
            while let (Some(f), Some(v)) = (kv.next(), kv.next()) {
                if let (Some(f), Some(v)) = (bytes(f), bytes(v)) {
                    fields.push((String::from_utf8_lossy(&f).into_owned(), v));
                }
            }
            out.push(StreamEntry {
                id: String::from_utf8_lossy(&id).into_owned(),
                fields,
            });
        }
    }
    out
}

/// Takes a free or expired lease, or renews one's own: one atomic step.
const LEASE_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Sets a key unless it exists, answering what it held (Redis 6 has no `SET ... NX GET`).
const CLAIM_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  return v
end
if ARGV[2] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return false
";

const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
";

#[async_trait]
impl Store for RedisStore {
    async fn get(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.read(key, redis::cmd("GET").arg(self.k(key))).await
    }

    async fn mget(&self, keys: &[String]) -> StoreResult<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for key in keys {
            cmd.arg(self.k(key));
        }
        self.read("<mget>", &cmd).await
    }

    async fn zadd(&self, key: &str, member: &str) -> StoreResult<bool> {
        let (_held, mut c) = self.write_conn().await?;
        let added: u64 = redis::cmd("ZADD")
            .arg(self.k(key))
            .arg(0)
            .arg(member)
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(key, e))?;
        self.replicated(&mut c, key).await?;
        Ok(added == 1)
    }

    async fn zrem(&self, key: &str, member: &str) -> StoreResult<bool> {
        let (_held, mut c) = self.write_conn().await?;
        let removed: u64 = redis::cmd("ZREM")
            .arg(self.k(key))
            .arg(member)
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(key, e))?;
        self.replicated(&mut c, key).await?;
        Ok(removed == 1)
    }

    async fn zcard(&self, key: &str) -> StoreResult<u64> {
        self.read(key, redis::cmd("ZCARD").arg(self.k(key))).await
    }

    async fn zcontains(&self, key: &str, member: &str) -> StoreResult<bool> {
        let score: Option<f64> = self
            .read(key, redis::cmd("ZSCORE").arg(self.k(key)).arg(member))
            .await?;
        Ok(score.is_some())
    }

    async fn zrange_lex(&self, key: &str, from: Lex<'_>, limit: usize) -> StoreResult<Vec<String>> {
        let mut cmd = match from {
            Lex::After(after) => {
                let mut cmd = redis::cmd("ZRANGEBYLEX");
                cmd.arg(self.k(key))
                    .arg(after.map_or_else(|| "-".to_string(), |a| format!("({a}")))
                    .arg("+");
                cmd
            }
            Lex::Before(before) => {
                let mut cmd = redis::cmd("ZREVRANGEBYLEX");
                cmd.arg(self.k(key))
                    .arg(before.map_or_else(|| "+".to_string(), |b| format!("({b}")))
                    .arg("-");
                cmd
            }
        };
        cmd.arg("LIMIT").arg(0).arg(limit);
        self.read(key, &cmd).await
    }

    async fn ztop(&self, key: &str, limit: usize) -> StoreResult<Vec<(String, f64)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(
            key,
            redis::cmd("ZREVRANGE")
                .arg(self.k(key))
                .arg(0)
                .arg(limit as i64 - 1)
                .arg("WITHSCORES"),
        )
        .await
    }

    async fn hgetall(&self, key: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let map: HashMap<String, Vec<u8>> = self
            .read(key, redis::cmd("HGETALL").arg(self.k(key)))
            .await?;
        Ok(map.into_iter().collect())
    }

    async fn apply(&self, writes: Vec<Write>) -> StoreResult<()> {
        if writes.is_empty() {
            return Ok(());
        }
        self.pipelined(&writes).await
    }

    async fn apply_atomic(&self, writes: Vec<Write>) -> StoreResult<()> {
        if writes.is_empty() {
            return Ok(());
        }
        super::check_one_slot(&writes)?;
        let key = writes[0].key();
        let (_held, mut c) = self.write_conn().await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for w in &writes {
            pipe.add_command(self.write_cmd(w)).ignore();
        }
        let mut attempt = 0;
        loop {
            match pipe.query_async::<()>(&mut c).await {
                Ok(()) => break,
                // A transaction whose commands were refused (MOVED after a failover, say)
                // was aborted whole, so sending it again is safe. The redis crate does not
                // learn a new slot map from a refused transaction: a plain command to the
                // same key does (it follows the MOVED), then the step is sent again.
                Err(e)
                    if self.is_cluster()
                        && attempt < EXECABORT_RETRIES
                        && e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::ExecAbort) =>
                {
                    attempt += 1;
                    let _ = redis::cmd("EXISTS")
                        .arg(self.k(key))
                        .query_async::<i64>(&mut c)
                        .await;
                }
                Err(e) => return Err(self.fail("<multi>", e)),
            }
        }
        self.replicated(&mut c, key).await
    }

    async fn xread(
        &self,
        key: &str,
        after: &str,
        count: usize,
        block: Duration,
    ) -> StoreResult<Vec<StreamEntry>> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(count.max(1));
        let (_pooled, mut c) = if block.is_zero() {
            (None, self.conn().await?)
        } else {
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
            let (pooled, handle) = self.blocking_conn(block).await?;
            (Some(pooled), handle)
        };
        cmd.arg("STREAMS").arg(self.k(key)).arg(after);
        let reply: redis::Value = cmd.query_async(&mut c).await.map_err(|e| {
            if e.is_timeout() {
                // Only this command's own connection timed out; nothing to drop.
                err(key, e)
            } else {
                self.fail(key, e)
            }
        })?;
        Ok(stream_entries(reply))
    }

    async fn xlen(&self, key: &str) -> StoreResult<u64> {
        self.read(key, redis::cmd("XLEN").arg(self.k(key))).await
    }

    async fn lease(&self, key: &str, holder: &str, ttl: Duration) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        let held: i64 = redis::cmd("EVAL")
            .arg(LEASE_SCRIPT)
            .arg(1)
            .arg(self.k(key))
            .arg(holder)
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(key, e))?;
        Ok(held == 1)
    }

    async fn release(&self, key: &str, holder: &str) -> StoreResult<()> {
        let mut c = self.conn().await?;
        redis::cmd("EVAL")
            .arg(RELEASE_SCRIPT)
            .arg(1)
            .arg(self.k(key))
            .arg(holder)
            .query_async::<i64>(&mut c)
            .await
            .map_err(|e| self.fail(key, e))?;
        Ok(())
    }

    async fn claim(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> StoreResult<Option<Vec<u8>>> {
        let (_held, mut c) = self.write_conn().await?;
        let held: Option<Vec<u8>> = redis::cmd("EVAL")
            .arg(CLAIM_SCRIPT)
            .arg(1)
            .arg(self.k(key))
            .arg(value)
            // 0: no expiry (see CLAIM_SCRIPT).
            .arg(ttl.map_or(0, |t| t.as_millis().max(1) as u64))
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(key, e))?;
        if held.is_none() {
            // This call set it: acknowledged only once replicated, like any write.
            self.replicated(&mut c, key).await?;
        }
        Ok(held)
    }

    async fn lease_holders(&self, keys: &[String]) -> StoreResult<Vec<Option<String>>> {
        // A lease is a plain string key holding its holder (see LEASE_SCRIPT).
        Ok(self
            .mget(keys)
            .await?
            .into_iter()
            .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
            .collect())
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut c = self.conn().await?;
        ping(&mut c).await.map_err(|e| self.fail("<ping>", e))
    }

    async fn publish(&self, channel: &str, payload: &[u8]) -> StoreResult<()> {
        let channel = format!("{}{channel}", self.prefix);
        let mut c = self.conn().await?;
        redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(payload)
            .query_async::<i64>(&mut c)
            .await
            .map_err(|e| self.fail(&channel, e))?;
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> StoreResult<super::Subscription> {
        let channel = format!("{}{channel}", self.prefix);
        let mut pubsub = match &self.backend {
            Backend::Single { client, .. } => client
                .get_async_pubsub()
                .await
                .map_err(|e| err(&channel, e))?,
            // A cluster forwards every PUBLISH to all its nodes: any one that answers does.
            Backend::Cluster { seeds, .. } => {
                let mut tried = StoreError::Redis("no redis cluster node given".into());
                let mut found = None;
                for seed in seeds {
                    let attempt = match redis::Client::open(seed.clone()) {
                        Ok(client) => client.get_async_pubsub().await,
                        Err(e) => Err(e),
                    };
                    match attempt {
                        Ok(p) => {
                            found = Some(p);
                            break;
                        }
                        Err(e) => tried = err(&channel, e),
                    }
                }
                found.ok_or(tried)?
            }
        };
        pubsub
            .subscribe(&channel)
            .await
            .map_err(|e| err(&channel, e))?;
        // The stream ends when the connection does.
        Ok(pubsub
            .into_on_message()
            .map(|m| m.get_payload_bytes().to_vec())
            .boxed())
    }
}

/// `url` with its password (if any) replaced by `***`.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The last '@' ends the user information: a password may hold a raw '@'.
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

/// `text` with `url`'s password (if any) blanked out, for errors that quote the URL.
fn redact_in(text: &str, url: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty());
    match password {
        Some(p) => text.replace(p, "***"),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_slots_are_parsed() {
        use redis::Value;
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7001),
                node("127.0.0.1", 7004),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("redis-2", 6379),
            ]),
            // A range whose master is unknown is left out.
            Value::Array(vec![Value::Int(1), Value::Int(2), node("?", 0)]),
        ]);
        let masters = Masters {
            read_at: std::time::Instant::now(),
            ranges: Arc::new(parse_cluster_slots(reply)),
        };
        assert_eq!(masters.ranges.len(), 2);
        assert_eq!(master_of(&masters, 0), Some(("127.0.0.1".into(), 7001)));
        assert_eq!(master_of(&masters, 5460), Some(("127.0.0.1".into(), 7001)));
        assert_eq!(master_of(&masters, 16383), Some(("redis-2".into(), 6379)));
    }

    #[test]
    fn passwords_never_reach_a_message() {
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redacted("rediss://:s3cret@db:6380/0"),
            "rediss://:***@db:6380/0"
        );
        assert_eq!(
            redacted("redis://app:s3cret@db:6379"),
            "redis://app:***@db:6379"
        );
        assert_eq!(redacted("redis://:p@ss@db:6379"), "redis://:***@db:6379");
        assert_eq!(
            redact_in("at redis://:p@ss@db", "redis://:p@ss@db"),
            "at redis://:***@db"
        );
        assert_eq!(
            redact_in("cannot parse rediss://:s3cret@db", "rediss://:s3cret@db"),
            "cannot parse rediss://:***@db"
        );
    }
}
