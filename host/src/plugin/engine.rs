//! The one wasmtime engine every plugin shares, its linker, the epoch ticker that bounds every
//! call in time, and the cache of compiled components.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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

/// One digest's compiled component, or its compile under way: whoever asks while it compiles
/// waits for that compile instead of starting another (a reload waits for the warm-up that the
/// first file event started, see `reload`). A failed compile is not kept.
type Slot = Arc<OnceLock<Result<Component, String>>>;

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
    components: Mutex<VecDeque<(String, Slot)>>,
    /// How many compiles ran, for tests of the cache.
    compiles: AtomicU64,
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
                compiles: AtomicU64::new(0),
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

    /// The component compiled from `bytes`, whose sha256 is `digest`: from the cache, from a
    /// compile of the same bytes under way, or compiled now. The cache's lock is held only to find
    /// or add the slot, so one compile never holds up another of different bytes.
    pub(super) fn component(&self, digest: &str, bytes: &[u8]) -> wasmtime::Result<Component> {
        let slot = self.slot(digest);
        let compiled = slot.get_or_init(|| {
            self.inner.compiles.fetch_add(1, Ordering::Relaxed);
            Component::new(&self.inner.engine, bytes).map_err(|e| format!("{e:#}"))
        });
        match compiled {
            Ok(component) => Ok(component.clone()),
            Err(text) => {
                // Bytes that do not compile now never will, but keeping them would push good
                // builds out of the cache (a file read half-written, say).
                if let Ok(mut cache) = self.inner.components.lock() {
                    cache.retain(|(_, s)| !Arc::ptr_eq(s, &slot));
                }
                Err(wasmtime::Error::msg(text.clone()))
            }
        }
    }

    /// The slot of `digest`, found and moved to the back (the most recently used end), or added
    /// there, dropping the least recently used beyond [`CACHED_COMPONENTS`].
    fn slot(&self, digest: &str) -> Slot {
        let Ok(mut cache) = self.inner.components.lock() else {
            return Slot::default(); // A poisoned cache: compile without it.
        };
        let entry = cache
            .iter()
            .position(|(d, _)| d == digest)
            .and_then(|at| cache.remove(at))
            .unwrap_or_else(|| (digest.to_string(), Slot::default()));
        let slot = entry.1.clone();
        cache.push_back(entry);
        while cache.len() > CACHED_COMPONENTS {
            cache.pop_front();
        }
        slot
    }

    /// How many components this engine has compiled.
    #[cfg(test)]
    pub(crate) fn compiles(&self) -> u64 {
        self.inner.compiles.load(Ordering::Relaxed)
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
            let a_slot = cache.pop_back().unwrap().1; // `a` leaves: its next use is a miss.
            while cache.len() < CACHED_COMPONENTS {
                let fake = format!("{:064}", cache.len());
                cache.push_back((fake, a_slot.clone()));
            }
        }
        engine.component(&digest(&a), &a).unwrap();
        let now = cached(&engine);
        assert_eq!(now.len(), CACHED_COMPONENTS);
        assert!(!now.contains(&digest(&b)), "the oldest entry was evicted");
        assert_eq!(now.last(), Some(&digest(&a)));
        assert_eq!(engine.compiles(), 3, "a, b, and a again after its eviction");
    }

    #[test]
    fn bytes_asked_for_while_they_compile_are_compiled_once() {
        let engine = PluginEngine::new().unwrap();
        let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist");
        let a = std::fs::read(dist.join("chaos.wasm"))
            .expect("plugins/dist is missing: run `make plugins`");
        let digest = format!("{:x}", Sha256::digest(&a));
        std::thread::scope(|s| {
            let asks: Vec<_> = (0..4)
                .map(|_| s.spawn(|| engine.component(&digest, &a).map(|_| ())))
                .collect();
            for ask in asks {
                ask.join().unwrap().unwrap();
            }
        });
        assert_eq!(engine.compiles(), 1);
    }

    #[test]
    fn bytes_that_do_not_compile_are_not_kept() {
        let engine = PluginEngine::new().unwrap();
        let junk = b"\0asm\x0d\0\x01\0 cut short";
        let digest = format!("{:x}", Sha256::digest(junk));
        let first = engine.component(&digest, junk).unwrap_err().to_string();
        let second = engine.component(&digest, junk).unwrap_err().to_string();
        assert_eq!(first, second, "the same cause each time");
        assert!(engine.inner.components.lock().unwrap().is_empty());
        assert_eq!(engine.compiles(), 2);
    }
}
