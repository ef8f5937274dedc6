//! The one wasmtime engine every plugin shares, its linker, the epoch ticker that bounds every
//! call in time, and the cache of compiled components.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use super::{HostState, bindings};

/// How often the epoch advances: the resolution of every plugin's CPU deadline (see
/// `cpu_deadline` in the parent module).
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Compiled components kept by digest. A reload that swaps back to a build seen before (a
/// rollback), or a file several plugins share, is then not compiled again: compiling is the
/// slow part of a reload (hundreds of milliseconds on a busy machine).
const CACHED_COMPONENTS: usize = 16;

/// The engine, the linker with the host functions, and the ticker thread.
#[derive(Clone)]
pub struct PluginEngine {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<HostState>,
    stop: Arc<AtomicBool>,
    /// The most recently used compiled components, newest last, by the sha256 of their bytes.
    components: Mutex<VecDeque<(String, Component)>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl PluginEngine {
    /// Builds the engine and starts the epoch ticker.
    pub fn new() -> Result<Self, wasmtime::Error> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        // Epoch interruption costs about a tenth of a call's time, against a quarter for fuel,
        // and bounds wall-clock CPU time, which is what `timeout_ms` promises.
        config.epoch_interruption(true);
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        // A std guest imports WASI (stdio, clocks, random, exit) even when it never uses it;
        // the context each store gets has nothing to reach.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bindings::Plugin::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.weak();
        let ticker_stop = stop.clone();
        std::thread::Builder::new()
            .name("barnabas-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(wasmtime::Error::from)?;

        Ok(PluginEngine {
            inner: Arc::new(Inner {
                engine,
                linker,
                stop,
                components: Mutex::new(VecDeque::new()),
            }),
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(super) fn linker(&self) -> &Linker<HostState> {
        &self.inner.linker
    }

    /// The component compiled from `bytes`, whose sha256 is `digest`: from the cache, or compiled
    /// now (outside the lock, so one compile never holds up another).
    pub(super) fn component(&self, digest: &str, bytes: &[u8]) -> wasmtime::Result<Component> {
        if let Ok(mut cache) = self.inner.components.lock()
            && let Some(at) = cache.iter().position(|(d, _)| d == digest)
            && let Some(entry) = cache.remove(at)
        {
            let component = entry.1.clone();
            cache.push_back(entry);
            return Ok(component);
        }
        let component = Component::new(&self.inner.engine, bytes)?;
        if let Ok(mut cache) = self.inner.components.lock() {
            if !cache.iter().any(|(d, _)| d == digest) {
                cache.push_back((digest.to_string(), component.clone()));
            }
            while cache.len() > CACHED_COMPONENTS {
                cache.pop_front();
            }
        }
        Ok(component)
    }
}

/// The number of whole ticks that cover `d`, at least one.
pub(super) fn ticks_covering(d: Duration) -> u64 {
    let tick = EPOCH_TICK.as_micros().max(1);
    u64::try_from(d.as_micros().div_ceil(tick))
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn a_build_seen_before_is_not_compiled_again() {
        let engine = PluginEngine::new().unwrap();
        let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist");
        let read = |name: &str| {
            std::fs::read(dist.join(name)).expect("plugins/dist is missing: run `make plugins`")
        };
        let digest = |bytes: &[u8]| format!("{:x}", Sha256::digest(bytes));
        let (a, b) = (read("chaos.wasm"), read("chaos-build2.wasm"));
        let cached = |engine: &PluginEngine| {
            let cache = engine.inner.components.lock().unwrap();
            cache.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>()
        };
        engine.component(&digest(&a), &a).unwrap();
        engine.component(&digest(&b), &b).unwrap();
        // Swapping back to the first build is a hit: it moves to the back, nothing is added.
        engine.component(&digest(&a), &a).unwrap();
        assert_eq!(cached(&engine), vec![digest(&b), digest(&a)]);
        // The cache is bounded: when a new build comes in, the least recently used goes.
        {
            let mut cache = engine.inner.components.lock().unwrap();
            let a_component = cache.pop_back().unwrap().1; // `a` leaves: its next use is a miss.
            while cache.len() < CACHED_COMPONENTS {
                let fake = format!("{:064}", cache.len());
                cache.push_back((fake, a_component.clone()));
            }
        }
        engine.component(&digest(&a), &a).unwrap();
        let now = cached(&engine);
        assert_eq!(now.len(), CACHED_COMPONENTS);
        assert!(!now.contains(&digest(&b)), "the oldest entry was evicted");
        assert_eq!(now.last(), Some(&digest(&a)));
    }
}
