//! The production store: Redis through a deadpool connection pool. All keys get the
//! configured prefix, so several deployments (or test runs) can share one Redis.
//!
//! Connections are redis-rs multiplexed connections: one carries any number of concurrent
//! requests. deadpool's checkout, though, validates each connection with an `UNWATCH` +
//! `PING` round trip, which would double the cost of every command. So the store keeps one
//! checked-out connection and clones its multiplexed handle per command, and goes back to
//! the pool (which replaces broken connections) only when that connection fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::io::tcp::TcpSettings;
use deadpool_redis::redis::IntoConnectionInfo;
use deadpool_redis::{redis, Manager, Pool, Runtime};

use super::{Lex, Store, StoreError, StoreResult, Write};

/// Commands per pipeline round trip: large enough to amortise the round trip, small enough
/// that one batch does not monopolise Redis for long.
const PIPELINE_CHUNK: usize = 10_000;

#[derive(Clone)]
pub struct RedisStore {
    pool: Pool,
    prefix: String,
    /// The connection in use (see the module docs).
    current: Arc<Mutex<Option<deadpool_redis::Connection>>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
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

impl RedisStore {
    /// `url` like `redis://127.0.0.1:6379`; `prefix` is prepended to every key. Checks the
    /// server answers, so a wrong URL fails at start-up rather than on the first request.
    pub async fn connect(url: &str, prefix: &str, pool_size: usize) -> StoreResult<Self> {
        let bad =
            |e: &dyn std::fmt::Display| StoreError::Redis(format!("bad redis url {url}: {e}"));
        // redis-rs leaves Nagle's algorithm on by default: small requests then wait for
        // delayed ACKs (~40 ms stalls, seen in `starling bench fanout`). Turn it off.
        let info = url
            .into_connection_info()
            .map_err(|e| bad(&e))?
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let manager = Manager::new(info).map_err(|e| bad(&e))?;
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| bad(&e))?;
        let store = Self {
            pool,
            prefix: prefix.to_string(),
            current: Arc::new(Mutex::new(None)),
        };
        let mut conn = store.conn().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| StoreError::Redis(format!("redis at {url} does not answer: {e}")))?;
        Ok(store)
    }

    async fn conn(&self) -> StoreResult<MultiplexedConnection> {
        if let Some(c) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Ok((**c).clone());
        }
        let fresh = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Redis(format!("no redis connection: {e}")))?;
        let handle = (*fresh).clone();
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh);
        Ok(handle)
    }

    /// Maps an error, and drops the current connection if it is broken, so the next
    /// command takes a validated one from the pool.
    fn fail(&self, key: &str, e: redis::RedisError) -> StoreError {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
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

    fn add_write(&self, pipe: &mut redis::Pipeline, w: &Write) {
        match w {
            Write::Set { key, value } => pipe.cmd("SET").arg(self.k(key)).arg(value),
            Write::Del { key } => pipe.cmd("DEL").arg(self.k(key)),
            Write::ZAdd { key, member } => pipe.cmd("ZADD").arg(self.k(key)).arg(0).arg(member),
            Write::ZRem { key, member } => pipe.cmd("ZREM").arg(self.k(key)).arg(member),
            Write::ZKeepLast { key, keep } | Write::ZKeepTop { key, keep } => pipe
                .cmd("ZREMRANGEBYRANK")
                .arg(self.k(key))
                .arg(0)
                .arg(-(*keep as i64) - 1),
            Write::ZIncr { key, member, delta } => {
                pipe.cmd("ZINCRBY").arg(self.k(key)).arg(*delta).arg(member)
            }
            Write::HSet { key, field, value } => {
                pipe.cmd("HSET").arg(self.k(key)).arg(field).arg(value)
            }
        }
        .ignore();
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn get(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let mut c = self.conn().await?;
        redis::cmd("GET")
            .arg(self.k(key))
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(key, e))
    }

    async fn mget(&self, keys: &[String]) -> StoreResult<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn().await?;
        let mut cmd = redis::cmd("MGET");
        for key in keys {
            cmd.arg(self.k(key));
        }
        cmd.query_async(&mut c)
            .await
            .map_err(|e| self.fail("<mget>", e))
    }

    async fn zadd(&self, key: &str, member: &str) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        let added: u64 = redis::cmd("ZADD")
            .arg(self.k(key))
            .arg(0)
            .arg(member)
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(key, e))?;
        Ok(added == 1)
    }

    async fn zrem(&self, key: &str, member: &str) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        let removed: u64 = redis::cmd("ZREM")
            .arg(self.k(key))
            .arg(member)
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(key, e))?;
        Ok(removed == 1)
    }

    async fn zcard(&self, key: &str) -> StoreResult<u64> {
        let mut c = self.conn().await?;
        redis::cmd("ZCARD")
            .arg(self.k(key))
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(key, e))
    }

    async fn zcontains(&self, key: &str, member: &str) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(self.k(key))
            .arg(member)
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(key, e))?;
        Ok(score.is_some())
    }

    async fn zrange_lex(&self, key: &str, from: Lex<'_>, limit: usize) -> StoreResult<Vec<String>> {
        let mut c = self.conn().await?;
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
        cmd.query_async(&mut c).await.map_err(|e| self.fail(key, e))
    }

    async fn ztop(&self, key: &str, limit: usize) -> StoreResult<Vec<(String, f64)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut c = self.conn().await?;
        redis::cmd("ZREVRANGE")
            .arg(self.k(key))
            .arg(0)
            .arg(limit as i64 - 1)
            .arg("WITHSCORES")
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(key, e))
    }

    async fn hgetall(&self, key: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let mut c = self.conn().await?;
        let map: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(self.k(key))
            .query_async(&mut c)
            .await
            .map_err(|e| self.fail(key, e))?;
        Ok(map.into_iter().collect())
    }

    async fn apply(&self, writes: Vec<Write>) -> StoreResult<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut c = self.conn().await?;
        for chunk in writes.chunks(PIPELINE_CHUNK) {
            let mut pipe = redis::pipe();
            for w in chunk {
                self.add_write(&mut pipe, w);
            }
            pipe.query_async::<()>(&mut c)
                .await
                .map_err(|e| self.fail("<pipeline>", e))?;
        }
        Ok(())
    }
}
