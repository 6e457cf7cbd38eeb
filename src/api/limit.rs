//! Brute-force limits on authentication.
//!
//! Every credential this API accepts (bearer token, session cookie, stream
//! ticket, the token posted to `POST /session`) is 256 random bits, so
//! guessing one is hopeless; the limit is defence in depth and keeps a
//! guessing client from costing the database one lookup per guess.
//!
//! Failed attempts, not requests, are counted: each client (an IPv4
//! address, or an IPv6 /64, which one host usually owns whole) has a token
//! bucket of `per_client_burst` failures refilled at `per_client_per_minute`;
//! a second bucket shared by all clients (`global_*`) is the backstop
//! against guesses spread over many addresses. A client whose bucket (or
//! the shared one) is empty is *locked out*: its credentials are answered
//! 429 with `Retry-After` without being looked up, so a lockout really stops
//! guessing (if they were still checked, a right guess would still be told
//! apart from a wrong one).
//!
//! One exception keeps an attacker from locking officers out of their
//! work: a credential that authenticated successfully before (remembered
//! by its hash, in a bounded most-recently-used set) is still checked
//! during a lockout, so an officer already signed in behind the same
//! address (a shared office NAT, a reverse proxy) carries on. Only
//! credentials never seen to work wait for the lockout to end. Nothing an
//! attacker does puts a hash in that set: it takes the real secret.
//!
//! Memory is bounded: at most `max_clients` buckets and `max_known`
//! hashes, the least recently used evicted first. An attacker who cycles
//! through more addresses than that evicts buckets (its own included) but
//! still spends the shared bucket.
//!
//! Time is the server clock ([`crate::clock`]), so tests move it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use hashlink::LruCache;

use super::error::ApiError;

/// Limits on failed authentication.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthLimits {
    /// Failures one client may make at once before it is locked out.
    pub per_client_burst: u32,
    /// Failures a client is forgiven per minute after that.
    pub per_client_per_minute: u32,
    /// Failures all clients together may make at once.
    pub global_burst: u32,
    /// Failures all clients together are forgiven per minute.
    pub global_per_minute: u32,
    /// Most clients tracked (least recently failing evicted first).
    pub max_clients: usize,
    /// Most credentials remembered as having worked.
    pub max_known: usize,
}

impl Default for AuthLimits {
    /// 10 failures per client, then one every 6 s; 300 across all clients,
    /// then 120 a minute. A person mistyping a token, or a browser whose
    /// session expired (it falls back to the sign-in form at the first 401),
    /// stays far below; a guesser gets 10 lookups a minute. 10 000 clients
    /// and 10 000 credentials take under 2 MB.
    fn default() -> Self {
        Self {
            per_client_burst: 10,
            per_client_per_minute: 10,
            global_burst: 300,
            global_per_minute: 120,
            max_clients: 10_000,
            max_known: 10_000,
        }
    }
}

/// Who is guessing: the peer address, an IPv6 /64 as one client. `None`
/// when the server was started without peer addresses (then all callers
/// share one bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(Option<IpAddr>);

impl ClientKey {
    /// The key of a peer address.
    pub fn of(ip: Option<IpAddr>) -> Self {
        Self(ip.map(|ip| match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mut seg = v6.segments();
                    seg[4..].fill(0);
                    IpAddr::V6(seg.into())
                }
            },
        }))
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(IpAddr::V6(ip)) => write!(f, "{ip}/64"),
            Some(ip) => write!(f, "{ip}"),
            None => f.write_str("unknown"),
        }
    }
}

/// The caller's address, from the connection (axum's `ConnectInfo`);
/// never fails.
#[derive(Debug, Clone, Copy)]
pub struct Client(pub ClientKey);

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_parts(parts))
    }
}

impl Client {
    /// The client of a request.
    pub fn from_parts(parts: &Parts) -> Self {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.ip());
        Self(ClientKey::of(ip))
    }
}

/// A token bucket of failures.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures still allowed (fractional while refilling).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: DateTime<Utc>,
}

impl Bucket {
    fn full(burst: u32, now: DateTime<Utc>) -> Self {
        Self {
            tokens: f64::from(burst),
            at: now,
        }
    }

    /// Refills for the time since the last update.
    fn refill(&mut self, burst: u32, per_minute: u32, now: DateTime<Utc>) {
        let secs = (now - self.at).num_milliseconds().max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + secs * f64::from(per_minute) / 60.0).min(f64::from(burst));
        self.at = self.at.max(now);
    }

    /// Seconds until one failure is allowed again (0: allowed now).
    fn wait_s(&self, per_minute: u32) -> u64 {
        if self.tokens >= 1.0 {
            0
        } else if per_minute == 0 {
            u64::MAX
        } else {
            ((1.0 - self.tokens) * 60.0 / f64::from(per_minute)).ceil() as u64
        }
    }
}

/// Counts since start, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitStats {
    /// Failed attempts recorded.
    pub failures: u64,
    /// Times a client (or all clients) became locked out.
    pub lockouts: u64,
    /// Attempts answered 429 without being checked.
    pub refused: u64,
    /// Clients tracked now.
    pub clients: usize,
    /// Credentials remembered as having worked.
    pub known: usize,
}

struct Inner {
    clients: LruCache<ClientKey, Bucket>,
    global: Bucket,
    known: LruCache<[u8; 32], ()>,
}

/// The limiter shared by every handler.
pub struct AuthLimiter {
    limits: AuthLimits,
    inner: Mutex<Inner>,
    failures: AtomicU64,
    lockouts: AtomicU64,
    refused: AtomicU64,
}

impl std::fmt::Debug for AuthLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLimiter")
            .field("limits", &self.limits)
            .field("stats", &self.stats())
            .finish()
    }
}

/// A credential's key in the remembered set: its SHA-256, never the secret.
fn digest(secret_hash: &[u8]) -> [u8; 32] {
    let mut d = [0u8; 32];
    let n = secret_hash.len().min(32);
    d[..n].copy_from_slice(&secret_hash[..n]);
    d
}

impl AuthLimiter {
    /// A limiter with `limits`; `now` fills the shared bucket.
    pub fn new(limits: AuthLimits, now: DateTime<Utc>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                clients: LruCache::new(limits.max_clients.max(1)),
                global: Bucket::full(limits.global_burst, now),
                known: LruCache::new(limits.max_known.max(1)),
            }),
            limits,
            failures: AtomicU64::new(0),
            lockouts: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is a cache of counters: a panic elsewhere while it was
        // held leaves nothing that matters inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Before a credential (`secret_hash`: its SHA-256) is looked up:
    /// `Err(429)` while `client`, or all clients, are locked out, unless
    /// the credential is known to have worked.
    pub fn admit(
        &self,
        client: ClientKey,
        secret_hash: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), ApiError> {
        let l = &self.limits;
        let mut g = self.lock();
        let mut wait = 0;
        if let Some(b) = g.clients.peek_mut(&client) {
            b.refill(l.per_client_burst, l.per_client_per_minute, now);
            wait = b.wait_s(l.per_client_per_minute);
        }
        g.global.refill(l.global_burst, l.global_per_minute, now);
        wait = wait.max(g.global.wait_s(l.global_per_minute));
        if wait == 0 || g.known.contains_key(&digest(secret_hash)) {
            return Ok(());
        }
        drop(g);
        self.refused.fetch_add(1, Ordering::Relaxed);
        Err(ApiError::TooManyRequests {
            retry_after_s: wait,
        })
    }

    /// A credential was looked up and worked.
    pub fn succeeded(&self, secret_hash: &[u8]) {
        self.lock().known.insert(digest(secret_hash), ());
    }

    /// A credential was presented and did not work: spends one failure of
    /// `client` and of the shared bucket; logs a lockout when one begins.
    pub fn failed(&self, client: ClientKey, secret_hash: Option<&[u8]>, now: DateTime<Utc>) {
        let l = &self.limits;
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut g = self.lock();
        if let Some(h) = secret_hash {
            // A revoked or expired credential no longer passes a lockout.
            g.known.remove(&digest(h));
        }
        let mut b = match g.clients.peek(&client) {
            Some(b) => {
                let mut b = *b;
                b.refill(l.per_client_burst, l.per_client_per_minute, now);
                b
            }
            None => Bucket::full(l.per_client_burst, now),
        };
        let client_locked = spend(&mut b);
        let client_wait = b.wait_s(l.per_client_per_minute);
        // Inserting marks the client most recent (evicted last).
        g.clients.insert(client, b);
        g.global.refill(l.global_burst, l.global_per_minute, now);
        let global_locked = spend(&mut g.global);
        drop(g);
        if client_locked {
            self.lockouts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %client,
                retry_after_s = client_wait,
                "authentication: too many failed attempts, client locked out"
            );
        }
        if global_locked {
            self.lockouts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "authentication: too many failed attempts across all clients; \
                 unknown credentials are refused until the shared limit refills"
            );
        }
    }

    /// Counts since start.
    pub fn stats(&self) -> LimitStats {
        let g = self.lock();
        LimitStats {
            failures: self.failures.load(Ordering::Relaxed),
            lockouts: self.lockouts.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            clients: g.clients.len(),
            known: g.known.len(),
        }
    }
}

/// Spends one failure; true when this one empties the bucket (a lockout
/// begins).
fn spend(b: &mut Bucket) -> bool {
    let before = b.tokens >= 1.0;
    b.tokens = (b.tokens - 1.0).max(0.0);
    before && b.tokens < 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ClientKey {
        ClientKey::of(Some(s.parse().unwrap()))
    }

    #[test]
    fn ipv6_clients_are_their_64_and_mapped_v4_is_v4() {
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_eq!(key("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn a_client_is_locked_after_its_burst_and_refills_over_time() {
        let t0 = Utc::now();
        let lim = AuthLimiter::new(AuthLimits::default(), t0);
        let (a, b) = (key("192.0.2.1"), key("192.0.2.2"));
        for _ in 0..10 {
            lim.admit(a, b"guess", t0).unwrap();
            lim.failed(a, Some(b"guess"), t0);
        }
        let Err(ApiError::TooManyRequests { retry_after_s }) = lim.admit(a, b"guess", t0) else {
            panic!("the 11th attempt must be refused");
        };
        assert_eq!(retry_after_s, 6);
        // Another client is not slowed down.
        lim.admit(b, b"guess", t0).unwrap();
        // One failure forgiven every 6 s.
        let later = t0 + chrono::TimeDelta::seconds(6);
        lim.admit(a, b"guess", later).unwrap();
        let s = lim.stats();
        assert_eq!((s.failures, s.lockouts, s.refused), (10, 1, 1));
    }

    #[test]
    fn a_credential_that_worked_passes_a_lockout_until_it_fails() {
        let t0 = Utc::now();
        let lim = AuthLimiter::new(AuthLimits::default(), t0);
        let a = key("192.0.2.1");
        lim.succeeded(b"real");
        for _ in 0..10 {
            lim.failed(a, Some(b"guess"), t0);
        }
        assert!(lim.admit(a, b"guess", t0).is_err());
        lim.admit(a, b"real", t0).unwrap();
        lim.failed(a, Some(b"real"), t0);
        assert!(lim.admit(a, b"real", t0).is_err());
    }

    #[test]
    fn the_shared_bucket_stops_guesses_spread_over_addresses() {
        let t0 = Utc::now();
        let limits = AuthLimits {
            global_burst: 5,
            ..AuthLimits::default()
        };
        let lim = AuthLimiter::new(limits, t0);
        for i in 0..5 {
            lim.failed(key(&format!("192.0.2.{i}")), None, t0);
        }
        assert!(lim.admit(key("198.51.100.1"), b"guess", t0).is_err());
    }

    #[test]
    fn memory_is_bounded_by_evicting_the_least_recent_client() {
        let t0 = Utc::now();
        let limits = AuthLimits {
            max_clients: 100,
            max_known: 50,
            global_burst: u32::MAX,
            ..AuthLimits::default()
        };
        let lim = AuthLimiter::new(limits, t0);
        for i in 0..10_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            lim.failed(ClientKey::of(Some(ip.into())), None, t0);
            lim.succeeded(&i.to_be_bytes());
        }
        let s = lim.stats();
        assert_eq!((s.clients, s.known), (100, 50));
    }
}
