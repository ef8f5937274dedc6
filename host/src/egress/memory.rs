//! An in-memory destination for tests: records what it is sent, and can be told to fail or wait.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::{Delivery, Destination, EgressError};

/// Keeps every delivery it accepts.
#[derive(Clone, Default)]
pub struct MemoryDestination {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    delivered: Mutex<Vec<Delivery>>,
    fail_with: Mutex<Option<EgressError>>,
    delay: Mutex<Duration>,
}

impl MemoryDestination {
    /// An empty destination that accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every delivery accepted so far.
    pub fn delivered(&self) -> Vec<Delivery> {
        self.inner
            .delivered
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }

    /// Makes every following send fail with `error` (or succeed again with `None`).
    pub fn fail_with(&self, error: Option<EgressError>) {
        if let Ok(mut f) = self.inner.fail_with.lock() {
            *f = error;
        }
    }

    /// Makes every following send wait `delay` before it resolves.
    pub fn delay(&self, delay: Duration) {
        if let Ok(mut d) = self.inner.delay.lock() {
            *d = delay;
        }
    }
}

impl Destination for MemoryDestination {
    fn send(&self, delivery: Delivery) -> BoxFuture<'static, Result<(), EgressError>> {
        let inner = self.inner.clone();
        async move {
            let delay = inner.delay.lock().map(|d| *d).unwrap_or_default();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Some(error) = inner.fail_with.lock().ok().and_then(|f| f.clone()) {
                return Err(error);
            }
            if let Ok(mut d) = inner.delivered.lock() {
                d.push(delivery);
            }
            Ok(())
        }
        .boxed()
    }
}
