//! Bounds every listener shares: how many client connections are open, how many bytes of
//! messages are under way between a client and its acknowledgement, and how often one source
//! address may fail to log in.
//!
//! Both are semaphores. A connection takes a permit from its listener's limit and from the global
//! one when it is accepted, or is closed at once; a message takes its size in byte permits before
//! it is dispatched and gives them back when its outcome is known. When the byte budget is spent,
//! the connection waiting for it stops reading: clients are slowed down through TCP (and AMQP
//! link credit) instead of the proxy's memory growing while a broker is away.
//!
//! A password check is made slow on purpose (argon2), so a flood of wrong logins is a flood of
//! CPU work. [`FailedLogins`] keeps a token bucket per source address: each failure takes a
//! token, and once they are gone that address's logins are refused without checking the password
//! until tokens come back (one a second).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config;
use crate::metrics::Metrics;

/// The limits of one running proxy.
pub struct Limits {
    connections: Arc<Semaphore>,
    inflight: Arc<Semaphore>,
    /// The whole byte budget: a message larger than it takes all of it.
    inflight_max: u32,
    logins: FailedLogins,
    metrics: Arc<Metrics>,
}

impl Limits {
    /// The limits `config` sets.
    pub fn new(config: &config::Limits, metrics: Arc<Metrics>) -> Arc<Limits> {
        let inflight_max = u32::try_from(config.max_inflight_bytes).unwrap_or(u32::MAX);
        Arc::new(Limits {
            connections: Arc::new(Semaphore::new(config.max_connections as usize)),
            inflight: Arc::new(Semaphore::new(inflight_max as usize)),
            inflight_max,
            logins: FailedLogins::new(LOGIN_FAILURE_BURST, LOGIN_FAILURE_REFILL_PER_SEC),
            metrics,
        })
    }

    /// The metrics these limits count into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The failed-login record every listener shares.
    pub fn logins(&self) -> &FailedLogins {
        &self.logins
    }

    /// The connection limit of listener `name`, on top of the global one; `None` for no limit of
    /// its own.
    pub fn listener(self: &Arc<Self>, name: &str, max: u32) -> ListenerLimit {
        ListenerLimit {
            name: Arc::from(name),
            own: (max != u32::MAX).then(|| Arc::new(Semaphore::new(max as usize))),
            shared: self.clone(),
        }
    }

    /// Takes `bytes` from the in-flight budget, waiting while it is spent. The budget comes back
    /// when the permit is dropped.
    pub async fn reserve(&self, bytes: usize) -> InflightPermit {
        let n = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.inflight_max);
        let permit = match self.inflight.clone().try_acquire_many_owned(n) {
            Ok(p) => Some(p),
            Err(_) => {
                tracing::debug!(bytes, "in-flight budget spent: waiting before reading on");
                // The semaphore is never closed, so this only fails if it were.
                self.inflight.clone().acquire_many_owned(n).await.ok()
            }
        };
        self.metrics.inflight_bytes(i64::from(n));
        InflightPermit {
            _permit: permit,
            bytes: n,
            metrics: self.metrics.clone(),
        }
    }
}

/// One listener's connection limit.
#[derive(Clone)]
pub struct ListenerLimit {
    name: Arc<str>,
    own: Option<Arc<Semaphore>>,
    shared: Arc<Limits>,
}

impl ListenerLimit {
    /// A permit for one more connection, or `None` (and the refusal counted) when the listener or
    /// the proxy is at its limit.
    pub fn admit(&self) -> Option<ConnectionPermit> {
        let own = match &self.own {
            Some(s) => match s.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => return self.refused("listener"),
            },
            None => None,
        };
        match self.shared.connections.clone().try_acquire_owned() {
            Ok(shared) => Some(ConnectionPermit {
                _own: own,
                _shared: shared,
            }),
            Err(_) => self.refused("proxy"),
        }
    }

    fn refused(&self, limit: &str) -> Option<ConnectionPermit> {
        tracing::debug!(
            listener = &*self.name,
            limit,
            "connection refused: at the connection limit"
        );
        self.shared.metrics.connection_refused(&self.name);
        None
    }
}

/// Held by a connection for as long as it is open.
pub struct ConnectionPermit {
    _own: Option<OwnedSemaphorePermit>,
    _shared: OwnedSemaphorePermit,
}

/// Bytes of the in-flight budget held by one message until its outcome is known.
pub struct InflightPermit {
    _permit: Option<OwnedSemaphorePermit>,
    bytes: u32,
    metrics: Arc<Metrics>,
}

impl Drop for InflightPermit {
    fn drop(&mut self) {
        self.metrics.inflight_bytes(-i64::from(self.bytes));
    }
}

/// Failed logins one address may have in a row before it is throttled.
const LOGIN_FAILURE_BURST: f64 = 10.0;

/// How fast a throttled address earns a try back.
const LOGIN_FAILURE_REFILL_PER_SEC: f64 = 1.0;

/// Addresses tracked at most. When the table is full, addresses back to a full bucket are
/// forgotten first; an address that still finds no room is not throttled, and the proxy-wide
/// one-check-at-a-time rule (see the AMQP SASL module) still bounds what its logins cost.
const TRACKED_ADDRESSES: usize = 65_536;

/// Failed logins per source address, as token buckets.
pub struct FailedLogins {
    burst: f64,
    per_sec: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl FailedLogins {
    fn new(burst: f64, per_sec: f64) -> Self {
        FailedLogins {
            burst,
            per_sec,
            buckets: Mutex::default(),
        }
    }

    /// Whether a login from `addr` may have its password checked now.
    pub fn allows(&self, addr: IpAddr) -> bool {
        self.allows_at(addr, Instant::now())
    }

    /// Records a failed login from `addr`.
    pub fn failed(&self, addr: IpAddr) {
        self.failed_at(addr, Instant::now())
    }

    fn allows_at(&self, addr: IpAddr, now: Instant) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        match buckets.get_mut(&addr) {
            Some(b) => self.refill(b, now) >= 1.0,
            None => true,
        }
    }

    fn failed_at(&self, addr: IpAddr, now: Instant) {
        let Ok(mut buckets) = self.buckets.lock() else {
            return;
        };
        if !buckets.contains_key(&addr) && buckets.len() >= TRACKED_ADDRESSES {
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.at).as_secs_f64() * self.per_sec < self.burst
            });
            if buckets.len() >= TRACKED_ADDRESSES {
                return;
            }
        }
        let b = buckets.entry(addr).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (self.refill(b, now) - 1.0).max(0.0);
    }

    /// Brings `b` up to date at `now`; its tokens.
    fn refill(&self, b: &mut Bucket, now: Instant) -> f64 {
        let earned = now.duration_since(b.at).as_secs_f64() * self.per_sec;
        b.tokens = (b.tokens + earned).min(self.burst);
        b.at = now;
        b.tokens
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn connections_are_bounded_per_listener_and_overall() {
        let limits = Limits::new(
            &config::Limits {
                max_connections: 3,
                max_inflight_bytes: 1024,
            },
            Metrics::new(),
        );
        let mqtt = limits.listener("mqtt", 2);
        let amqp = limits.listener("amqp", u32::MAX);
        let a = mqtt.admit().unwrap();
        let _b = mqtt.admit().unwrap();
        assert!(mqtt.admit().is_none(), "the listener's own limit");
        let _c = amqp.admit().unwrap();
        assert!(amqp.admit().is_none(), "the proxy's limit");
        drop(a);
        assert!(
            amqp.admit().is_some(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn failed_logins_throttle_one_address_and_recover() {
        use std::time::Duration;
        let logins = FailedLogins::new(3.0, 1.0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(logins.allows_at(a, t0));
            logins.failed_at(a, t0);
        }
        assert!(!logins.allows_at(a, t0), "three failures spend the burst");
        assert!(logins.allows_at(b, t0), "another address is not affected");
        let t1 = t0 + Duration::from_millis(500);
        assert!(!logins.allows_at(a, t1), "half a try is not a try");
        let t2 = t0 + Duration::from_millis(1100);
        assert!(logins.allows_at(a, t2), "a try comes back after a second");
        logins.failed_at(a, t2);
        assert!(!logins.allows_at(a, t2));
        let later = t2 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(
                logins.allows_at(a, later),
                "the burst comes back in full, no more"
            );
            logins.failed_at(a, later);
        }
        assert!(!logins.allows_at(a, later));
    }

    #[tokio::test]
    async fn the_byte_budget_waits_until_bytes_come_back() {
        let limits = Limits::new(
            &config::Limits {
                max_connections: 1,
                max_inflight_bytes: 1024,
            },
            Metrics::new(),
        );
        let first = limits.reserve(1000).await;
        let waiting = limits.reserve(100);
        tokio::pin!(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        drop(first);
        let _second = waiting.await;
        // A message larger than the whole budget takes all of it rather than waiting forever.
        let huge = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            drop(_second);
            limits.reserve(1 << 20).await
        })
        .await;
        assert!(huge.is_ok());
    }
}
