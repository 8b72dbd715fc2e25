//! Accounts and tokens: sign-up, sign-in, the bearer-token extractor and the brute-force
//! limiter.
//!
//! Why each piece is the way it is:
//! * Passwords are stored as argon2id PHC strings under `account:<user>` in the shared
//!   store, so every gateway replica sees every account. Hashing is deliberately slow, so it
//!   runs on the blocking pool behind a semaphore (one permit per core): a burst of
//!   sign-ups cannot starve the async workers that serve everything else.
//! * An account is created by claiming `account:<user>` with its hash (`Store::claim`, a
//!   set-if-absent in one atomic step): two replicas racing to create the same user cannot
//!   both succeed (`get` then `set` could), and a crash cannot leave a name claimed without
//!   a password (claiming the name and writing the hash in two steps could).
//! * Tokens are `v2.<user>.<expiry unix seconds>.<generation>.<HMAC-SHA256>`: any replica
//!   holding the secret checks the MAC and expiry without state. The generation is the
//!   account's token generation when the token was issued (`token-generation:<user>` in
//!   the store, 0 while absent); sign-out replaces it with a random one, which revokes
//!   every token issued before on every replica. Stream tickets (`t1.`, 60 s, live
//!   timeline only) have the same form. So each authenticated request costs one store read: the
//!   price of a sign-out that works. Without a configured secret a random one is drawn per
//!   process (tokens then die with the process and are not shared between replicas).
//! * Sign-ins are limited in sliding 60 s windows: failures per (user, client IP) pair (5,
//!   then that pair is locked out for a minute, twice as long at each lockout after, up to
//!   16 minutes, until it signs in), failures per client IP (20, whatever the users), and
//!   all sign-ins per client IP (30, successful ones too: each costs a hash, so one client
//!   cannot hold the hashing slots). A user under attack from one address still signs in
//!   from another, and other users of the attacker's address are not locked out. It lives
//!   in the gateway's memory: each replica limits on its own.
//! * A sign-in for an unknown user verifies against a dummy hash, so the answer time does
//!   not reveal which user names exist, and the message is the same as for a wrong password.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::Semaphore;
use unicode_normalization::UnicodeNormalization;

use starling_proto::follower::v1::follower_service_client::FollowerServiceClient;
use starling_proto::follower::v1::RegisterUsersRequest;
use starling_runtime::store::{Store, Write};

use crate::api::{rfc3339, ApiJson};
use crate::errors::ApiError;
use crate::AppState;

/// Failed sign-ins allowed per (user, client IP) within [`FAILURE_WINDOW`]; then that pair
/// is locked out, for the window and twice as long at each lockout after (see `Limiter`).
pub const MAX_FAILURES: usize = 5;
/// Failed sign-ins allowed per client IP, whatever the users, within [`FAILURE_WINDOW`].
pub const MAX_CLIENT_FAILURES: usize = 20;
/// Sign-ins per client IP within [`FAILURE_WINDOW`], successful or not: each costs an
/// argon2 hash, so one client cannot take the hashing slots from everyone else.
pub const MAX_CLIENT_SIGNINS: usize = 30;
/// The sliding window of the brute-force limiter.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// The longest lockout of one (user, client IP) pair.
const MAX_LOCKOUT: Duration = Duration::from_secs(16 * 60);

const TOKEN_VERSION: &str = "v2";
const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 128;
/// Limiter keys kept before stale ones are swept (bounds memory under a spray of IPs).
const LIMITER_SWEEP_AT: usize = 10_000;
/// A secret shorter than this could be recovered offline from any issued token.
pub const MIN_SECRET_BYTES: usize = 32;
/// Sign-ups per client IP per minute.
const SIGNUPS_PER_IP: usize = 20;
/// How long a sign-in or sign-up waits for a password-hashing slot before 503.
const HASH_QUEUE_WAIT: Duration = Duration::from_secs(5);

fn account_key(user: &str) -> String {
    format!("account:{user}")
}

fn generation_key(user: &str) -> String {
    format!("token-generation:{user}")
}

/// A genuine, unexpired token's claims (the store has not been asked yet whether the
/// generation is still current: [`Auth::authenticate`] does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub user: String,
    pub generation: u64,
    /// Unix seconds.
    pub expires: u64,
}

/// What a signed string is for; a string of one kind is refused as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The bearer token sign-in answers: every authenticated request, for `token_ttl`.
    Token,
    /// A stream ticket: opens the user's live timeline only, for [`TICKET_TTL`]. It goes
    /// in a URL (an `EventSource` cannot send headers), where proxies and browsers log
    /// it, so it is short-lived and useless for anything else.
    Ticket,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Token => TOKEN_VERSION,
            Kind::Ticket => TICKET_VERSION,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Token => "token",
            Kind::Ticket => "stream ticket",
        }
    }
}

/// How long a stream ticket may be used to open a stream.
pub const TICKET_TTL: Duration = Duration::from_secs(60);
const TICKET_VERSION: &str = "t1";

/// 401 when the account signed out since `claims` were issued (or 503 when the store
/// cannot say).
pub async fn still_signed_in(store: &dyn Store, claims: &Claims) -> Result<(), ApiError> {
    if generation(store, &claims.user).await? != claims.generation {
        return Err(ApiError::unauthorized("signed out: sign in again"));
    }
    Ok(())
}

/// Everything sign-up, sign-in and token checks need, shared by all requests.
pub struct Auth {
    secret: Vec<u8>,
    ttl: Duration,
    /// Failed sign-ins per (user, client IP), with growing lockouts.
    pairs: Limiter,
    /// Failed sign-ins per client IP.
    clients: Limiter,
    /// All sign-ins per client IP.
    signins: Limiter,
    hashing: Arc<Semaphore>,
    /// Sign-up attempts per client IP: each costs a full argon2 hash and an account.
    pub signups: Limiter,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("ttl", &self.ttl).finish()
    }
}

impl Auth {
    /// `secret`: the HMAC key (`None`: a random one for this process).
    pub fn new(secret: Option<&str>, ttl: Duration) -> anyhow::Result<Self> {
        let secret = match secret {
            Some(s) if s.len() < MIN_SECRET_BYTES => anyhow::bail!(
                "the token secret must be at least {MIN_SECRET_BYTES} bytes: a short one can be \
                 found offline from any token and then used to forge tokens for every user"
            ),
            Some(s) => s.as_bytes().to_vec(),
            None => {
                tracing::info!(
                    "no token secret configured: using a random one (tokens end with this process)"
                );
                rand::random::<[u8; 32]>().to_vec()
            }
        };
        anyhow::ensure!(!ttl.is_zero(), "the token lifetime must be positive");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Self {
            secret,
            ttl,
            pairs: Limiter::new(MAX_FAILURES, FAILURE_WINDOW).with_growing_lockouts(MAX_LOCKOUT),
            clients: Limiter::new(MAX_CLIENT_FAILURES, FAILURE_WINDOW),
            signins: Limiter::new(MAX_CLIENT_SIGNINS, FAILURE_WINDOW),
            hashing: Arc::new(Semaphore::new(cores)),
            signups: Limiter::new(SIGNUPS_PER_IP, Duration::from_secs(60)),
        })
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(payload.as_bytes());
        mac
    }

    /// A token for `user` of token generation `generation`, valid for the configured
    /// lifetime, and its expiry (unix seconds).
    pub fn issue(&self, user: &str, generation: u64) -> (String, u64) {
        let expires = unix_now().saturating_add(self.ttl.as_secs().max(1));
        self.issue_until(Kind::Token, user, generation, expires)
    }

    /// A stream ticket for `user` (see [`Kind::Ticket`]), and its expiry.
    pub fn issue_ticket(&self, user: &str, generation: u64) -> (String, u64) {
        let expires = unix_now().saturating_add(TICKET_TTL.as_secs());
        self.issue_until(Kind::Ticket, user, generation, expires)
    }

    fn issue_until(&self, kind: Kind, user: &str, generation: u64, expires: u64) -> (String, u64) {
        let payload = format!("{}.{user}.{expires}.{generation}", kind.prefix());
        let sig = URL_SAFE_NO_PAD.encode(self.mac(&payload).finalize().into_bytes());
        (format!("{payload}.{sig}"), expires)
    }

    /// The claims of a token of `kind`, if it is genuine and not expired.
    pub fn verify(&self, kind: Kind, token: &str) -> Result<Claims, ApiError> {
        let invalid = || ApiError::unauthorized(format!("invalid {}: sign in again", kind.name()));
        let (payload, sig) = token.rsplit_once('.').ok_or_else(invalid)?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| invalid())?;
        // Constant-time comparison, inside `verify_slice`.
        self.mac(payload)
            .verify_slice(&sig)
            .map_err(|_| invalid())?;
        let mut parts = payload.split('.');
        let (Some(prefix), Some(user), Some(expires), Some(generation), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(invalid());
        };
        if prefix != kind.prefix() {
            return Err(invalid());
        }
        let expires: u64 = expires.parse().map_err(|_| invalid())?;
        let generation: u64 = generation.parse().map_err(|_| invalid())?;
        if expires <= unix_now() {
            return Err(ApiError::unauthorized(format!(
                "{} expired: sign in again",
                kind.name()
            )));
        }
        Ok(Claims {
            user: user.to_string(),
            generation,
            expires,
        })
    }

    /// The claims of a token of `kind` that is genuine, unexpired and not signed out.
    pub async fn authenticate(
        &self,
        store: &dyn Store,
        kind: Kind,
        token: &str,
    ) -> Result<Claims, ApiError> {
        let claims = self.verify(kind, token)?;
        still_signed_in(store, &claims).await?;
        Ok(claims)
    }

    /// A hashing slot, waited for at most [`HASH_QUEUE_WAIT`]. The permit is owned so it
    /// can move into the blocking task: if the client goes away, the hash still holds its
    /// slot until it ends, so abandoned requests cannot pile up unbounded hashing work.
    async fn hashing_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        match tokio::time::timeout(HASH_QUEUE_WAIT, self.hashing.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(ApiError::unavailable("the gateway is shutting down")),
            Err(_) => Err(ApiError::unavailable(
                "the gateway is busy checking passwords; try again shortly",
            )),
        }
    }

    async fn hash_password(&self, password: String) -> Result<String, ApiError> {
        let permit = self.hashing_slot().await?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
                .map_err(|e| ApiError::internal(format!("cannot make a salt: {e}")))?;
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| ApiError::internal(format!("cannot hash the password: {e}")))
        })
        .await
        .map_err(|e| ApiError::internal(format!("password hashing failed: {e}")))?
    }

    /// True if `password` matches `phc`; with `phc` = `None` (no such user) verifies against
    /// a dummy hash and answers false, taking the same time.
    async fn check_password(
        &self,
        phc: Option<String>,
        password: String,
    ) -> Result<bool, ApiError> {
        let permit = self.hashing_slot().await?;
        Ok(tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let known = phc.is_some();
            let phc = phc.unwrap_or_else(|| dummy_hash().to_string());
            let Ok(parsed) = PasswordHash::new(&phc) else {
                tracing::error!("stored password hash is not a PHC string");
                return false;
            };
            let ok = Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok();
            known && ok
        })
        .await
        .unwrap_or(false))
    }
}

/// A hash of a random password, for sign-ins of unknown users (see the module docs).
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::encode_b64(&[7u8; 16]).ok();
        salt.and_then(|salt| {
            Argon2::default()
                .hash_password(&rand::random::<[u8; 16]>(), &salt)
                .ok()
                .map(|h| h.to_string())
        })
        .unwrap_or_default()
    })
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Attempts per key in a sliding window (see the module docs); optionally, a key that
/// uses up its attempts is locked out for the window, then twice as long at each lockout
/// after, up to a cap, until an attempt succeeds ([`Limiter::clear`]).
#[derive(Debug)]
pub struct Limiter {
    max: usize,
    window: Duration,
    /// `Some(cap)`: lockouts grow, up to `cap`.
    growing: Option<Duration>,
    keys: Mutex<HashMap<String, KeyState>>,
}

#[derive(Debug, Default)]
struct KeyState {
    attempts: VecDeque<Instant>,
    /// Lockouts so far (growing limiters only).
    strikes: u32,
    locked_until: Option<Instant>,
}

impl KeyState {
    /// Nothing to remember: no attempt in the window, and no lockout within `forget_after`.
    fn idle(&self, now: Instant, forget_after: Duration) -> bool {
        self.attempts.is_empty() && self.locked_until.is_none_or(|u| u + forget_after <= now)
    }
}

impl Limiter {
    pub fn new(max: usize, window: Duration) -> Self {
        Self {
            max,
            window,
            growing: None,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Lockouts that double each time, up to `cap`.
    pub fn with_growing_lockouts(mut self, cap: Duration) -> Self {
        self.growing = Some(cap);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, KeyState>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts an attempt against every key, or `Err(retry after)` without counting if any
    /// key has used up its attempts or is locked out. Checking and counting are one step
    /// under the lock, so a burst of parallel attempts cannot all pass before the first one
    /// is counted. An attempt that turns out fine is given back with [`Limiter::release`].
    pub fn reserve(&self, keys: &[String]) -> Result<Instant, Duration> {
        let now = Instant::now();
        let mut map = self.lock();
        let mut wait = None::<Duration>;
        for key in keys {
            if let Some(k) = map.get_mut(key) {
                prune(&mut k.attempts, now, self.window);
                // A key quiet for as long as the longest lockout starts over.
                if k.locked_until
                    .is_some_and(|u| u + self.forget_after() <= now)
                {
                    k.locked_until = None;
                    k.strikes = 0;
                }
                let left = match k.locked_until {
                    Some(until) if until > now => Some(until - now),
                    _ if k.attempts.len() >= self.max => {
                        let oldest = k.attempts.front().copied().unwrap_or(now);
                        Some(self.window.saturating_sub(now.duration_since(oldest)))
                    }
                    _ => None,
                };
                if let Some(left) = left {
                    wait = Some(wait.map_or(left, |w| w.max(left)));
                }
            }
        }
        if let Some(wait) = wait {
            return Err(wait);
        }
        if map.len() >= LIMITER_SWEEP_AT {
            let forget_after = self.forget_after();
            map.retain(|_, k| {
                prune(&mut k.attempts, now, self.window);
                !k.idle(now, forget_after)
            });
        }
        for key in keys {
            let k = map.entry(key.clone()).or_default();
            k.attempts.push_back(now);
            if let (Some(cap), true) = (self.growing, k.attempts.len() >= self.max) {
                let lockout = self.window.saturating_mul(1 << k.strikes.min(16)).min(cap);
                k.locked_until = Some(now + lockout);
                k.strikes += 1;
            }
        }
        Ok(now)
    }

    /// Gives back the attempt counted at `at` by [`Limiter::reserve`] (and the lockout it
    /// started, if any).
    pub fn release(&self, keys: &[String], at: Instant) {
        let mut map = self.lock();
        for key in keys {
            if let Some(k) = map.get_mut(key) {
                if let Some(i) = k.attempts.iter().position(|&t| t == at) {
                    k.attempts.remove(i);
                    if k.locked_until == Some(at + self.lockout_before(k.strikes)) {
                        k.locked_until = None;
                        k.strikes = k.strikes.saturating_sub(1);
                    }
                }
            }
        }
    }

    /// How long after its last lockout a key's strikes are forgotten.
    fn forget_after(&self) -> Duration {
        self.growing.unwrap_or(Duration::ZERO)
    }

    /// The lockout the `strikes`-th lockout got.
    fn lockout_before(&self, strikes: u32) -> Duration {
        match self.growing {
            Some(cap) if strikes > 0 => self
                .window
                .saturating_mul(1 << (strikes - 1).min(16))
                .min(cap),
            _ => Duration::ZERO,
        }
    }

    /// Forgets `key`: its attempts, lockout and strikes.
    pub fn clear(&self, key: &str) {
        self.lock().remove(key);
    }
}

fn prune(q: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while q.front().is_some_and(|&t| now.duration_since(t) >= window) {
        q.pop_front();
    }
}

fn pair_key(user: &str, ip: IpAddr) -> String {
    format!("pair:{user}@{ip}")
}

fn ip_key(ip: IpAddr) -> String {
    format!("ip:{ip}")
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Session {
    pub user: String,
    pub token: String,
    pub expires_at: String,
    /// The same instant in unix seconds, for the gRPC answer.
    #[serde(skip)]
    pub expires: u64,
}

fn session(auth: &Auth, user: String, generation: u64) -> Session {
    let (token, expires) = auth.issue(&user, generation);
    Session {
        user,
        token,
        expires_at: rfc3339(expires as i64, 0),
        expires,
    }
}

/// The password as hashed and checked: NFKC-normalised, so the same password typed on two
/// keyboards (full-width digits, a precomposed or combined accent) is the same password.
fn normalised(password: &str) -> String {
    password.nfkc().collect()
}

/// Passwords too common to protect an account (see the file's header).
const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

fn is_common(password: &str) -> bool {
    let lower = password.to_lowercase();
    COMMON_PASSWORDS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .any(|l| l == lower)
}

/// Sign-up's rules for a new account's name and (normalised) password.
fn check_credentials(c: &Credentials) -> Result<(), ApiError> {
    starling_runtime::check_user("user", &c.user)?;
    let password = normalised(&c.password);
    let n = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        return Err(ApiError::bad_request(format!(
            "password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long (got {n})"
        )));
    }
    if is_common(&password) {
        return Err(ApiError::bad_request(
            "password is one of the most common ones; choose another",
        ));
    }
    Ok(())
}

/// Records in the follower service that `user` exists (`RegisterUsers`, idempotent).
async fn register(state: &AppState, user: &str) -> Result<(), ApiError> {
    FollowerServiceClient::new(state.ctx.mesh.channel("follower"))
        .register_users(RegisterUsersRequest {
            users: vec![user.to_string()],
        })
        .await?;
    Ok(())
}

/// The account's current token generation (0 until its first sign-out).
async fn generation(store: &dyn Store, user: &str) -> Result<u64, ApiError> {
    let value = store
        .get(&generation_key(user))
        .await
        .map_err(store_unavailable)?;
    match value {
        None => Ok(0),
        Some(v) => std::str::from_utf8(&v)
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| store_unavailable(format!("{} is not a number", generation_key(user)))),
    }
}

fn store_unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "account store failure");
    ApiError::unavailable("account store unavailable")
}

/// `POST /api/signup`.
#[utoipa::path(post, path = "/api/signup", tag = "accounts", request_body = Credentials,
    responses(
        (status = 201, description = "the account and a token", body = Session),
        (status = 400, description = "bad name or password", body = crate::api::ErrorBody),
        (status = 409, description = "the name is taken", body = crate::api::ErrorBody),
        (status = 429, description = "too many sign-ups from this address", body = crate::api::ErrorBody),
    ))]
pub async fn signup(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(c): ApiJson<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
    let session = sign_up(&state, peer.ip(), c).await?;
    Ok((StatusCode::CREATED, Json(session)))
}

/// Creates an account (JSON and gRPC alike).
pub async fn sign_up(state: &AppState, peer: IpAddr, c: Credentials) -> Result<Session, ApiError> {
    check_credentials(&c)?;
    state
        .auth
        .signups
        .reserve(&[ip_key(peer)])
        .map_err(|wait| {
            ApiError::too_many_requests(format!(
                "too many sign-ups from this address: try again in {} s",
                wait.as_secs().max(1)
            ))
        })?;
    let store = &state.ctx.store;
    let key = account_key(&c.user);
    let taken = || ApiError::conflict(format!("user name {:?} is taken", c.user));
    if store.get(&key).await.map_err(store_unavailable)?.is_some() {
        return Err(taken());
    }
    let phc = state.auth.hash_password(normalised(&c.password)).await?;
    // The user exists for every service (the follower service's registry) before the
    // account does: a crash in between leaves a registered name without an account, which
    // the next sign-up of that name completes, never an account others cannot follow.
    register(state, &c.user).await?;
    // The atomic claim (module docs).
    if store
        .claim(&key, phc.as_bytes(), None)
        .await
        .map_err(store_unavailable)?
        .is_some()
    {
        return Err(taken());
    }
    tracing::info!(user = %c.user, "account created");
    // A new account has signed out of nothing: generation 0.
    Ok(session(&state.auth, c.user, 0))
}

/// `POST /api/signin`.
#[utoipa::path(post, path = "/api/signin", tag = "accounts", request_body = Credentials,
    responses(
        (status = 200, description = "a token", body = Session),
        (status = 400, description = "bad input", body = crate::api::ErrorBody),
        (status = 401, description = "wrong name or password", body = crate::api::ErrorBody),
        (status = 429, description = "over a sign-in limit", body = crate::api::ErrorBody),
    ))]
pub async fn signin(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(c): ApiJson<Credentials>,
) -> Result<Json<Session>, ApiError> {
    sign_in(&state, peer.ip(), c).await.map(Json)
}

/// Checks a password and answers a token (JSON and gRPC alike).
pub async fn sign_in(state: &AppState, peer: IpAddr, c: Credentials) -> Result<Session, ApiError> {
    starling_runtime::check_user("user", &c.user)?;
    if c.password.len() > 4 * MAX_PASSWORD {
        return Err(ApiError::bad_request("password too long"));
    }
    let auth = &state.auth;
    let client = [ip_key(peer)];
    let pair = [pair_key(&c.user, peer)];
    // Every sign-in counts against its client (each costs a hash); failures count against
    // the (user, client) pair and the client. A locked pair does not lock the user out
    // from other clients, nor other users out from this one.
    auth.signins.reserve(&client).map_err(|wait| {
        ApiError::too_many_requests(format!(
            "too many sign-ins from this address: try again in {} s",
            wait.as_secs().max(1)
        ))
    })?;
    let paired = auth.pairs.reserve(&pair).map_err(|wait| {
        ApiError::too_many_requests(format!(
            "too many failed sign-ins for {} from this address: try again in {} s",
            c.user,
            wait.as_secs().max(1)
        ))
    })?;
    let counted = match auth.clients.reserve(&client) {
        Ok(at) => at,
        Err(wait) => {
            auth.pairs.release(&pair, paired);
            return Err(ApiError::too_many_requests(format!(
                "too many failed sign-ins from this address: try again in {} s",
                wait.as_secs().max(1)
            )));
        }
    };
    let phc = state
        .ctx
        .store
        .get(&account_key(&c.user))
        .await
        .map_err(store_unavailable)?
        .and_then(|v| String::from_utf8(v).ok());
    if !auth.check_password(phc, normalised(&c.password)).await? {
        // The reserved attempts stay counted: it was a failure.
        return Err(ApiError::unauthorized("wrong user name or password"));
    }
    auth.clients.release(&client, counted);
    auth.pairs.clear(&pair[0]);
    // Accounts made before the registry existed join it at their next sign-in.
    if let Err(e) = register(state, &c.user).await {
        tracing::warn!(user = %c.user, error = %e, "cannot register a signed-in user");
    }
    let generation = generation(state.ctx.store.as_ref(), &c.user).await?;
    Ok(session(auth, c.user, generation))
}

/// `POST /api/signout`: revokes every token of the user issued so far, on every gateway
/// (module docs). The new generation is drawn at random rather than counted up: two
/// sign-outs racing (each reading, then writing) then cannot put back a generation that
/// a third sign-out revoked in between; a late write only revokes more.
#[utoipa::path(post, path = "/api/signout", tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "every token of the account is revoked"),
        (status = 401, description = "no, or a bad, token", body = crate::api::ErrorBody),
    ))]
pub async fn signout(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<StatusCode, ApiError> {
    sign_out(&state, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes every token of `user` (JSON and gRPC alike; see [`signout`]).
pub async fn sign_out(state: &AppState, user: &str) -> Result<(), ApiError> {
    let next = loop {
        let g = rand::random::<u64>();
        if g != 0 {
            break g;
        }
    };
    state
        .ctx
        .store
        .apply(vec![Write::Set {
            key: generation_key(user),
            value: next.to_string().into_bytes(),
        }])
        .await
        .map_err(store_unavailable)?;
    tracing::info!(%user, "signed out everywhere");
    Ok(())
}

/// `POST /api/stream-ticket`: a short-lived ticket that opens the user's live timeline
/// (`?ticket=`), for clients that cannot send an `Authorization` header (`EventSource`).
#[utoipa::path(post, path = "/api/stream-ticket", tag = "timelines",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "a ticket that opens the user's live timeline within 60 s", body = Ticket),
        (status = 401, description = "no, or a bad, token", body = crate::api::ErrorBody),
    ))]
pub async fn stream_ticket(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Ticket>, ApiError> {
    let token = bearer(&headers)?;
    let claims = state
        .auth
        .authenticate(state.ctx.store.as_ref(), Kind::Token, token)
        .await?;
    let (ticket, expires) = state.auth.issue_ticket(&claims.user, claims.generation);
    Ok(Json(Ticket {
        ticket,
        expires_at: rfc3339(expires as i64, 0),
    }))
}

/// The bearer token of `Authorization: Bearer <token>`.
pub fn bearer(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::unauthorized("sign in first: missing Authorization: Bearer <token>")
        })?
        .to_str()
        .map_err(|_| ApiError::unauthorized("invalid Authorization header"))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("Authorization must be \"Bearer <token>\""))
}

/// `GET /api/me`.
#[utoipa::path(get, path = "/api/me", tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "who the token belongs to", body = Me),
        (status = 401, description = "no, or a bad, token", body = crate::api::ErrorBody),
    ))]
pub async fn me(AuthUser(user): AuthUser) -> Json<Me> {
    Json(Me { user })
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    pub user: String,
}

/// A stream ticket (see [`Kind::Ticket`]).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ticket {
    pub ticket: String,
    pub expires_at: String,
}

/// The user of the request's bearer token; rejects with 401 when it is missing, forged or
/// expired.
#[derive(Debug, Clone)]
pub struct AuthUser(pub String);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)?;
        state
            .auth
            .authenticate(state.ctx.store.as_ref(), Kind::Token, token)
            .await
            .map(|c| AuthUser(c.user))
    }
}

/// Shared by the API: 403 unless `acting_for` (when given) is the token's user.
pub fn ensure_self(me: &str, acting_for: Option<&str>, field: &str) -> Result<String, ApiError> {
    match acting_for {
        None => Ok(me.to_string()),
        Some(other) if other == me => Ok(me.to_string()),
        Some(other) => Err(ApiError::forbidden(format!(
            "signed in as {me:?}: cannot act as {field} {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(
            Some("test secret of at least thirty-two bytes"),
            Duration::from_secs(60),
        )
        .unwrap()
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let a = auth();
        let (t, expires) = a.issue("alice", 3);
        assert_eq!(
            a.verify(Kind::Token, &t).unwrap(),
            Claims {
                user: "alice".into(),
                generation: 3,
                expires,
            }
        );
        assert!(
            a.verify(Kind::Ticket, &t).is_err(),
            "a token is not a ticket"
        );
        let (ticket, _) = a.issue_ticket("alice", 3);
        assert_eq!(a.verify(Kind::Ticket, &ticket).unwrap().user, "alice");
        assert!(
            a.verify(Kind::Token, &ticket).is_err(),
            "a ticket is not a token"
        );
        let forged = t.replacen("alice", "mallory", 1);
        assert_eq!(
            a.verify(Kind::Token, &forged).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        assert!(a.verify(Kind::Token, "garbage").is_err());
        assert!(a.verify(Kind::Token, "").is_err());
        assert!(a.verify(Kind::Token, "v2.alice.99999999999.0.!!!").is_err());
        let older = t.replacen(".3.", ".2.", 1);
        assert!(
            a.verify(Kind::Token, &older).is_err(),
            "the generation is signed too"
        );
        let other = Auth::new(
            Some("another secret, at least thirty-two bytes"),
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(other.verify(Kind::Token, &t).is_err());
    }

    #[test]
    fn expired_tokens_are_rejected() {
        let a = auth();
        let (t, _) = a.issue_until(Kind::Token, "alice", 0, unix_now() - 1);
        let e = a.verify(Kind::Token, &t).unwrap_err();
        assert!(e.message.contains("expired"), "{e}");
    }

    #[test]
    fn limiter_blocks_after_max_failures_and_forgets_after_the_window() {
        let l = Limiter::new(3, Duration::from_millis(50));
        let keys = ["pair:a@1".to_string()];
        for _ in 0..3 {
            assert!(l.reserve(&keys).is_ok());
        }
        assert!(l.reserve(&keys).is_err());
        // Other keys are not affected.
        assert!(l.reserve(&["pair:b@1".into()]).is_ok());
        std::thread::sleep(Duration::from_millis(60));
        assert!(l.reserve(&keys).is_ok());
    }

    #[test]
    fn lockouts_grow_and_a_success_forgets_them() {
        let window = Duration::from_millis(40);
        let l = Limiter::new(2, window).with_growing_lockouts(Duration::from_secs(1));
        let key = ["pair:a@1".to_string()];
        let lock_out = |l: &Limiter| {
            assert!(l.reserve(&key).is_ok());
            assert!(l.reserve(&key).is_ok());
            l.reserve(&key).unwrap_err()
        };
        let first = lock_out(&l);
        assert!(first <= window, "{first:?}");
        std::thread::sleep(window + Duration::from_millis(10));
        let second = lock_out(&l);
        assert!(second > window && second <= window * 2, "{second:?}");
        std::thread::sleep(window * 2 + Duration::from_millis(10));
        let third = lock_out(&l);
        assert!(third > window * 2 && third <= window * 4, "{third:?}");
        l.clear(&key[0]);
        assert!(l.reserve(&key).is_ok(), "a success forgets the strikes");
        // A successful attempt that reached the limit gives its lockout back.
        let at = l.reserve(&key).unwrap();
        l.release(&key, at);
        assert!(l.reserve(&key).is_ok());
    }

    #[test]
    fn a_burst_of_parallel_attempts_gets_only_the_allowed_number() {
        let l = std::sync::Arc::new(Limiter::new(5, Duration::from_secs(60)));
        let keys = ["pair:victim@9".to_string(), "ip:9".to_string()];
        let passed: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..20)
                .map(|_| scope.spawn(|| l.reserve(&keys).is_ok()))
                .collect();
            handles
                .into_iter()
                .map(|h| usize::from(h.join().unwrap()))
                .sum()
        });
        assert_eq!(passed, 5, "checking and counting are one step");
    }

    #[test]
    fn a_successful_attempt_is_given_back() {
        let l = Limiter::new(2, Duration::from_secs(60));
        let keys = ["user:a".to_string()];
        let at = l.reserve(&keys).unwrap();
        l.release(&keys, at);
        assert!(l.reserve(&keys).is_ok());
        assert!(l.reserve(&keys).is_ok());
        assert!(l.reserve(&keys).is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        let e = Auth::new(Some("hunter2"), Duration::from_secs(60)).unwrap_err();
        assert!(e.to_string().contains("at least 32 bytes"), "{e}");
    }

    #[test]
    fn passwords_are_checked() {
        let ok = Credentials {
            user: "alice".into(),
            password: "correct horse".into(),
        };
        assert!(check_credentials(&ok).is_ok());
        for common in ["12345678", "Password1", "P@ssw0rd", "ｐａｓｓｗｏｒｄ"] {
            let c = Credentials {
                user: "alice".into(),
                password: common.into(),
            };
            let e = check_credentials(&c).unwrap_err();
            assert!(e.message.contains("common"), "{common}: {}", e.message);
        }
        // Full-width letters are the same password as their ASCII forms.
        assert_eq!(normalised("ｃｏｒｒｅｃｔ ｈｏｒｓｅ"), "correct horse");
        let short = Credentials {
            user: "alice".into(),
            password: "1234567".into(),
        };
        assert!(check_credentials(&short).is_err());
        let bad_user = Credentials {
            user: "Alice".into(),
            password: "12345678".into(),
        };
        assert!(check_credentials(&bad_user).is_err());
    }

    #[test]
    fn only_the_token_user_may_act() {
        assert_eq!(ensure_self("a", None, "author").unwrap(), "a");
        assert_eq!(ensure_self("a", Some("a"), "author").unwrap(), "a");
        assert_eq!(
            ensure_self("a", Some("b"), "author").unwrap_err().status,
            StatusCode::FORBIDDEN
        );
    }
}
