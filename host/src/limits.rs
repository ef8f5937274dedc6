//! Bounds every listener shares: how many client connections are open, and how many bytes of
//! messages are under way between a client and its acknowledgement.
//!
//! Both are semaphores. A connection takes a permit from its listener's limit and from the global
//! one when it is accepted, or is closed at once; a message takes its size in byte permits before
//! it is dispatched and gives them back when its outcome is known. When the byte budget is spent,
//! the connection waiting for it stops reading: clients are slowed down through TCP (and AMQP
//! link credit) instead of the proxy's memory growing while a broker is away.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config;
use crate::metrics::Metrics;

/// The limits of one running proxy.
pub struct Limits {
    connections: Arc<Semaphore>,
    inflight: Arc<Semaphore>,
    /// The whole byte budget: a message larger than it takes all of it.
    inflight_max: u32,
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
            metrics,
        })
    }

    /// The connection limit of listener `name`, on top of the global one; `None` for no limit of
    /// its own.
    pub fn listener(self: &Arc<Self>, name: &'static str, max: u32) -> ListenerLimit {
        ListenerLimit {
            name,
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
    name: &'static str,
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
            listener = self.name,
            limit,
            "connection refused: at the connection limit"
        );
        self.shared.metrics.connection_refused(self.name);
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
