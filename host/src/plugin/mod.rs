//! WebAssembly plugins: the one `bindgen!` of the WIT contract, the shared engine with its epoch
//! ticker, loading (compile and type-check once per version) and calling with a deadline and a
//! memory cap.
//!
//! A [`Plugin`] keeps a pool of ready instances. A call takes one (or instantiates a new one, about
//! 10-20 µs), runs `handle` under an epoch deadline, and puts the instance back. After a trap the
//! instance's state is unknown, so it is dropped and the next call builds a fresh one: a failing
//! plugin costs only the message that failed.

mod engine;

pub use engine::PluginEngine;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Store, StoreContextMut, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::config::PluginConfig;
use crate::message::{Direction, Header, Headers, Protocol, Source};

/// The WIT version this host speaks; plugins built against another one are refused.
pub const WIT_PACKAGE: &str = "barnabas:plugin@0.2.0";

mod bindings {
    //! Generated from `plugin-sdk/wit/plugin.wit`, the one contract shared with the SDK.
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../plugin-sdk/wit",
        // Calls into the guest are async so that WASI I/O a guest does (a panic message on
        // stderr, a stray println!) is awaited on the call's fiber instead of blocking an async
        // worker thread. Our own two imports never block and stay plain functions.
        exports: { default: async },
        // `handle`'s message borrows the host's topic, key and payload: they are copied once, into
        // the guest's memory, instead of into owned buffers first.
        ownership: Borrowing { duplicate_if_necessary: false },
    });
}

use bindings::barnabas::plugin::types as wit;

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid component, or it does not fit the WIT world.
    #[error("{0}")]
    Invalid(String),
    /// The plugin's `init` failed (usually its `config` is wrong).
    #[error("init failed: {0}")]
    Init(String),
}

/// Why one call failed. The message follows the route's `on_error`.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The call used more than its `timeout_ms` of CPU time.
    #[error("timed out: used more than {0:?} of CPU")]
    Timeout(Duration),
    /// The plugin tried to grow its memory past `memory_mb`.
    #[error("exceeded its memory limit of {0} MiB")]
    OutOfMemory(usize),
    /// The plugin trapped (a panic, an unreachable, a bad memory access).
    #[error("trapped: {0}")]
    Trap(String),
    /// The plugin returned an error.
    #[error("returned an error: {0}")]
    Plugin(String),
    /// A fresh instance could not be built.
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
    /// The call did not return within its wall-clock bound (it was waiting, not computing: a
    /// sleep, or a poll on a clock).
    #[error("did not return within {0:?} of wall-clock time")]
    Stalled(Duration),
    /// The call returned more data than a call may (`memory_mb`, over all its outputs).
    #[error("returned more than {0} MiB of data")]
    OutputTooLarge(usize),
}

/// A call's wall-clock bound is this many times its CPU budget (`timeout_ms`), and at least
/// [`MIN_WALL_CLOCK`]. The CPU budget alone does not bound a call that waits without computing
/// (a WASI sleep); the wall-clock bound is generous so that a computing call on a busy machine,
/// preempted for a while, still meets its CPU deadline first.
pub const WALL_CLOCK_FACTOR: u32 = 10;

/// The least wall-clock bound of a call, instantiation included.
pub const MIN_WALL_CLOCK: Duration = Duration::from_secs(1);

/// Table elements an instance may have: a Rust guest's function table holds a few hundred; the
/// cap keeps a `table.grow` from making the host allocate gigabytes.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The input of one call, as the plugin will see it.
#[derive(Debug, Clone)]
pub struct PluginInput<'a> {
    /// Where the message came from: protocol, client id, identity.
    pub source: &'a Source,
    /// Which way it travels.
    pub direction: Direction,
    /// The route running the plugin.
    pub route: &'a str,
    /// The current topic.
    pub topic: &'a str,
    /// The QoS.
    pub qos: u8,
    /// The current headers.
    pub headers: &'a Headers,
    /// The current key.
    pub key: Option<&'a Bytes>,
    /// The current payload.
    pub payload: &'a Bytes,
}

/// One output of a forward verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginOutput {
    /// A named output, or `None` to keep the current one.
    pub name: Option<String>,
    /// The topic.
    pub topic: String,
    /// The headers.
    pub headers: Headers,
    /// The key.
    pub key: Option<Bytes>,
    /// The payload.
    pub payload: Bytes,
}

/// What a plugin decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Send these on.
    Forward(Vec<PluginOutput>),
    /// Filter out, with a reason.
    Drop(String),
    /// Refuse, with a reason.
    Reject(String),
}

/// The per-instance state the host keeps in each `Store`.
struct HostState {
    plugin: Arc<str>,
    config_json: Arc<str>,
    /// The CPU time one call may use (`timeout_ms`).
    cpu_budget: Duration,
    /// The thread's CPU clock when the running call first reached an epoch deadline; `None` until
    /// then. Reset before every call.
    cpu_mark: Option<Duration>,
    limits: StoreLimits,
    wasi: WasiCtx,
    table: ResourceTable,
    /// The message being handled, for the `current` imports; `None` outside `handle`.
    current: Option<Current>,
}

/// What a plugin may ask about the message it is handling. Kept apart from the call's arguments
/// so that a plugin that never asks costs nothing for it.
struct Current {
    /// `None` between calls: nothing of one message stays with the instance for the next.
    headers: Option<Headers>,
    protocol: Protocol,
    direction: Direction,
    client_id: Arc<str>,
    identity: Option<Arc<str>>,
    route: String,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::barnabas::plugin::types::Host for HostState {}

impl bindings::barnabas::plugin::current::Host for HostState {
    fn header_value(&mut self, name: String) -> Option<Vec<u8>> {
        self.current
            .as_ref()?
            .headers
            .as_deref()?
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.to_vec())
    }

    fn headers(&mut self) -> Vec<wit::Header> {
        self.current.as_ref().map_or_else(Vec::new, |c| {
            c.headers
                .iter()
                .flat_map(|h| h.iter())
                .map(|h| wit::Header {
                    name: h.name.clone(),
                    value: h.value.to_vec(),
                })
                .collect()
        })
    }

    fn origin(&mut self) -> wit::Source {
        match &self.current {
            Some(c) => wit::Source {
                protocol: match c.protocol {
                    Protocol::Mqtt => wit::Protocol::Mqtt,
                    Protocol::Amqp => wit::Protocol::Amqp,
                    Protocol::Kafka => wit::Protocol::Kafka,
                },
                direction: match c.direction {
                    Direction::Inbound => wit::Direction::Inbound,
                    Direction::Outbound => wit::Direction::Outbound,
                },
                client_id: c.client_id.to_string(),
                identity: c.identity.as_deref().map(str::to_string),
                route: c.route.clone(),
            },
            // `init`: there is no message.
            None => wit::Source {
                protocol: wit::Protocol::Mqtt,
                direction: wit::Direction::Inbound,
                client_id: String::new(),
                identity: None,
                route: String::new(),
            },
        }
    }
}

impl bindings::barnabas::plugin::host::Host for HostState {
    fn log(&mut self, level: bindings::barnabas::plugin::host::Level, message: String) {
        use bindings::barnabas::plugin::host::Level;
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn config(&mut self) -> String {
        self.config_json.to_string()
    }
}

struct Instance {
    store: Store<HostState>,
    plugin: bindings::Plugin,
}

/// Idle instances kept per plugin; more are built on demand and dropped when returned to a full
/// pool.
const MAX_IDLE_INSTANCES: usize = 16;

/// A loaded, type-checked plugin version.
pub struct Plugin {
    name: Arc<str>,
    wasm: PathBuf,
    digest: String,
    config_json: Arc<str>,
    timeout: Duration,
    memory_bytes: usize,
    engine: PluginEngine,
    pre: bindings::PluginPre<HostState>,
    idle: Mutex<Vec<Instance>>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// Compiles the component at `config.wasm` (or takes it from the engine's cache of builds seen
    /// before), checks it against the WIT world, and builds one instance to run its `init` (so a
    /// bad `config` fails here, not on the first message). Compiling takes tens of milliseconds
    /// and this blocks: call it off the async worker threads.
    pub fn load(engine: &PluginEngine, config: &PluginConfig) -> Result<Plugin, LoadError> {
        let bytes = std::fs::read(&config.wasm).map_err(|source| LoadError::Read {
            path: config.wasm.clone(),
            source,
        })?;
        Self::from_bytes(engine, config, &bytes)
    }

    /// Like [`Plugin::load`], from the component's bytes.
    pub fn from_bytes(
        engine: &PluginEngine,
        config: &PluginConfig,
        bytes: &[u8],
    ) -> Result<Plugin, LoadError> {
        let digest = hex(&Sha256::digest(bytes));
        check_component_header(bytes, &config.wasm)?;
        let component = engine
            .component(&digest, bytes)
            .map_err(|e| LoadError::Invalid(format!("not a WebAssembly component: {e:#}")))?;
        check_contract_version(engine, &component, &config.wasm)?;
        let instance_pre = engine.linker().instantiate_pre(&component).map_err(|e| {
            LoadError::Invalid(format!("does not fit the {WIT_PACKAGE} world: {e:#}"))
        })?;
        let pre = bindings::PluginPre::new(instance_pre).map_err(|e| {
            LoadError::Invalid(format!("does not fit the {WIT_PACKAGE} world: {e:#}"))
        })?;
        let plugin = Plugin {
            name: Arc::from(config.name.as_str()),
            wasm: config.wasm.clone(),
            digest,
            config_json: Arc::from(config.config_json.as_str()),
            timeout: config.timeout,
            memory_bytes: config.memory_bytes,
            engine: engine.clone(),
            pre,
            idle: Mutex::new(Vec::new()),
        };
        // The first instance runs `init`, bounded in wall-clock time like a call: a plugin that
        // sleeps in `init` must not wedge a reload or `barnabas check`.
        let limit = plugin.wall_clock_limit();
        let first = async { tokio::time::timeout(limit, plugin.instantiate()).await };
        let instance = block_on(first)
            .map_err(LoadError::Init)?
            .unwrap_or(Err(CallError::Stalled(limit)))
            .map_err(|e| match e {
                CallError::Plugin(msg) => LoadError::Init(msg),
                other => LoadError::Init(other.to_string()),
            })?;
        plugin.release(instance);
        Ok(plugin)
    }

    /// Compiles the component `bytes` into the engine's cache, so that loading it later finds it
    /// compiled (or waits for this compile rather than starting another). Bytes that are not a
    /// component are left for the load to report.
    pub fn compile_ahead(engine: &PluginEngine, bytes: &[u8]) {
        if check_component_header(bytes, Path::new("")).is_ok() {
            let digest = hex(&Sha256::digest(bytes));
            let _ = engine.component(&digest, bytes);
        }
    }

    /// Whether this plugin is what `config` with the component `bytes` would build: same name,
    /// file contents, `config` and limits.
    pub fn is_build_of(&self, config: &PluginConfig, bytes: &[u8]) -> bool {
        *self.name == *config.name
            && *self.config_json == *config.config_json
            && self.timeout == config.timeout
            && self.memory_bytes == config.memory_bytes
            && self.digest == hex(&Sha256::digest(bytes))
    }

    /// The plugin's name in routes.yaml.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sha256 of the component file, hex encoded.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The component file it was loaded from.
    pub fn wasm(&self) -> &Path {
        &self.wasm
    }

    /// The CPU deadline per call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The wall-clock bound of a call (and of building an instance for it).
    pub fn wall_clock_limit(&self) -> Duration {
        wall_clock_limit(self.timeout)
    }

    /// The linear-memory cap per instance, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    /// Runs the plugin on one message, within its CPU deadline and its wall-clock bound. A call
    /// that overruns either is abandoned with its instance.
    pub async fn call(&self, input: PluginInput<'_>) -> Result<Verdict, CallError> {
        let mut call = std::pin::pin!(self.call_unbounded(input));
        // A call that only computes finishes in its first poll (the guest runs on a fiber that
        // yields only to wait for WASI I/O or a clock): it needs no timer, which would cost more
        // than the call. One that yields gets the wall-clock bound from then on.
        if let std::task::Poll::Ready(result) = futures::poll!(call.as_mut()) {
            return result;
        }
        let limit = self.wall_clock_limit();
        tokio::time::timeout(limit, call)
            .await
            .unwrap_or(Err(CallError::Stalled(limit)))
    }

    async fn call_unbounded(&self, input: PluginInput<'_>) -> Result<Verdict, CallError> {
        let mut instance = match self.acquire() {
            Some(i) => i,
            None => self.instantiate().await?,
        };
        arm_cpu_deadline(&mut instance.store);
        set_current(instance.store.data_mut(), &input);
        let message = to_wit(&input);
        match instance
            .plugin
            .call_handle(&mut instance.store, message)
            .await
        {
            Ok(result) => {
                // Nothing of this message stays with the instance for the next one.
                if let Some(current) = &mut instance.store.data_mut().current {
                    current.headers = None;
                }
                self.release(instance);
                match result {
                    Ok(verdict) => Ok(from_wit(verdict, &input)),
                    Err(msg) => Err(CallError::Plugin(msg)),
                }
            }
            // The instance is dropped here: after a trap its memory and tables are in an unknown
            // state.
            Err(e) => Err(self.classify(e)),
        }
    }

    fn classify(&self, e: wasmtime::Error) -> CallError {
        if e.root_cause()
            .to_string()
            .contains("fuel allocated for hostcalls has been exhausted")
        {
            // The result carried more than the store's hostcall fuel (see `instantiate`).
            return CallError::OutputTooLarge(self.memory_bytes / (1024 * 1024));
        }
        if let Some(trap) = e.downcast_ref::<Trap>() {
            match trap {
                Trap::Interrupt => return CallError::Timeout(self.timeout),
                Trap::AllocationTooLarge => {
                    return CallError::OutOfMemory(self.memory_bytes / (1024 * 1024));
                }
                _ => {}
            }
        }
        // The root cause is the trap itself ("wasm `unreachable` instruction executed"); the
        // full chain with the guest backtrace goes to the debug log.
        let cause = e.root_cause().to_string();
        tracing::debug!(plugin = %self.name, error = %format!("{e:?}"), "plugin trapped");
        // StoreLimits' trap_on_grow_failure reports the limit as an error, not a `Trap` code.
        if cause.contains("memory") && (cause.contains("limit") || cause.contains("grow")) {
            return CallError::OutOfMemory(self.memory_bytes / (1024 * 1024));
        }
        CallError::Trap(cause)
    }

    /// Drops every idle instance, so the next call builds a fresh one. Used to measure the cost of
    /// instantiation; a reload frees old versions by dropping the `Plugin` instead.
    pub fn clear_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    fn acquire(&self) -> Option<Instance> {
        self.idle.lock().ok().and_then(|mut idle| idle.pop())
    }

    fn release(&self, instance: Instance) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_INSTANCES
        {
            idle.push(instance);
        }
    }

    async fn instantiate(&self) -> Result<Instance, CallError> {
        let state = HostState {
            plugin: self.name.clone(),
            config_json: self.config_json.clone(),
            cpu_budget: self.timeout,
            cpu_mark: None,
            limits: store_limits(self.memory_bytes),
            // No preopened directories, no environment, no arguments, no network: plugins reach
            // nothing but the two host functions.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            current: None,
        };
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|s| &mut s.limits);
        // What a call's result may carry to the host, in bytes, counted as it is lifted (copied)
        // and checked before each copy: outputs that all point at one large guest buffer cost the
        // host no more than `memory_mb` in all, however many there are.
        store.set_hostcall_fuel(self.memory_bytes);
        store.epoch_deadline_callback(cpu_deadline);
        arm_cpu_deadline(&mut store);
        let plugin = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| CallError::Instantiate(format!("{e:#}")))?;
        match plugin.call_init(&mut store).await {
            Ok(Ok(())) => Ok(Instance { store, plugin }),
            Ok(Err(msg)) => Err(CallError::Plugin(msg)),
            Err(e) => Err(self.classify(e)),
        }
    }
}

/// What one instance may allocate: `memory_bytes` of linear memory, a bounded table, and a few
/// instances, tables and memories. Growing past a limit traps, so it reports as the plugin's
/// failure rather than as a silently failed `memory.grow`.
fn store_limits(memory_bytes: usize) -> StoreLimits {
    StoreLimitsBuilder::new()
        .memory_size(memory_bytes)
        .trap_on_grow_failure(true)
        .table_elements(MAX_TABLE_ELEMENTS)
        .instances(4)
        .tables(8)
        .memories(2)
        .build()
}

/// The wall-clock bound of a call with CPU budget `timeout`.
fn wall_clock_limit(timeout: Duration) -> Duration {
    (timeout * WALL_CLOCK_FACTOR).max(MIN_WALL_CLOCK)
}

/// Runs `future` to completion from synchronous code (loading a plugin) on a thread and a small
/// runtime of its own: WASI clocks and the wall-clock bound need tokio's timer, and the caller may
/// be anywhere (`barnabas check`, a `spawn_blocking` thread, a test's runtime).
fn block_on<F: Future + Send>(future: F) -> Result<F::Output, String>
where
    F::Output: Send,
{
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("barnabas-plugin-init".into())
            .spawn_scoped(scope, || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .map(|rt| rt.block_on(future))
                    .map_err(|e| format!("cannot start a runtime to run init: {e}"))
            })
            .map_err(|e| format!("cannot start a thread to run init: {e}"))?
            .join()
            .map_err(|_| "init panicked".to_string())?
    })
}

/// Prepares a store for one call: the CPU clock starts afresh and the first epoch deadline is the
/// next tick.
///
/// `timeout_ms` bounds the CPU time a call uses, not the wall-clock time it spans: on a busy
/// machine (a reload compiling plugins, many connections) a worker thread can be preempted for
/// longer than a plugin's whole budget, and a wall-clock deadline would fail innocent messages.
/// Reading the thread's CPU clock costs a system call, too much for every call of a few
/// microseconds, so it is read only from the epoch callback: a call shorter than a tick (nearly
/// all) never reads it.
fn arm_cpu_deadline(store: &mut Store<HostState>) {
    store.data_mut().cpu_mark = None;
    store.set_epoch_deadline(1);
}

/// The epoch callback: a call that spans a tick gets here. The first time, it notes the thread's
/// CPU clock; after that it interrupts the call once it has used its budget since then, and
/// otherwise lets it run to the tick that would exhaust what is left. The guest runs on this
/// thread for the whole call (the callback never yields), so the thread's CPU clock is the call's.
fn cpu_deadline(mut ctx: StoreContextMut<'_, HostState>) -> wasmtime::Result<UpdateDeadline> {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    let now = Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or_default(),
        u32::try_from(ts.tv_nsec).unwrap_or_default(),
    );
    let state = ctx.data_mut();
    let mark = *state.cpu_mark.get_or_insert(now);
    let used = now.saturating_sub(mark);
    if used >= state.cpu_budget {
        return Ok(UpdateDeadline::Interrupt);
    }
    Ok(UpdateDeadline::Continue(engine::ticks_covering(
        state.cpu_budget - used,
    )))
}

/// Refuses, with what to do instead, a file that is not a WebAssembly component: anything else
/// (a text file, a core module built for `wasm32-unknown-unknown` or `wasm32-wasip1`) would get a
/// parser's complaint about the first bytes.
fn check_component_header(bytes: &[u8], path: &Path) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    // The version and layer fields after the magic: 1, 0 for a core module, 0x0d, 1 for a
    // component.
    const CORE: &[u8] = &[1, 0, 0, 0];
    let build = "build the plugin for wasm32-wasip2, which makes a component \
                 (`barnabas plugin build DIR`, or `cargo build --release --target wasm32-wasip2`)";
    if !bytes.starts_with(MAGIC) {
        return Err(LoadError::Invalid(format!(
            "{} is not a WebAssembly file: {build}",
            path.display()
        )));
    }
    if bytes.get(4..8) == Some(CORE) {
        return Err(LoadError::Invalid(format!(
            "{} is a core WebAssembly module, not a component: {build}",
            path.display()
        )));
    }
    Ok(())
}

/// Refuses a component built against another version of the contract, naming what to rebuild.
fn check_contract_version(
    engine: &PluginEngine,
    component: &Component,
    path: &Path,
) -> Result<(), LoadError> {
    let ty = component.component_type();
    let names: Vec<String> = ty
        .imports(engine.engine())
        .map(|(name, _)| name.to_string())
        .collect();
    for name in &names {
        if let Some(rest) = name.strip_prefix("barnabas:plugin/") {
            let version = rest
                .split_once('@')
                .map(|(_, v)| v)
                .unwrap_or("unversioned");
            if !WIT_PACKAGE.ends_with(&format!("@{version}")) {
                return Err(LoadError::Invalid(format!(
                    "{} was built against barnabas:plugin@{version}, but this proxy speaks {WIT_PACKAGE}: \
                     rebuild the plugin with barnabas-plugin-sdk {}",
                    path.display(),
                    WIT_PACKAGE.rsplit('@').next().unwrap_or_default()
                )));
            }
        }
    }
    Ok(())
}

/// Puts the message's headers and source where the `current` imports find them, reusing the
/// buffers of the previous call.
fn set_current(state: &mut HostState, input: &PluginInput<'_>) {
    let source = input.source;
    match &mut state.current {
        Some(c) => {
            c.headers = Some(input.headers.clone());
            c.protocol = source.protocol;
            c.direction = input.direction;
            if !Arc::ptr_eq(&c.client_id, &source.client_id) {
                c.client_id = source.client_id.clone();
            }
            c.identity.clone_from(&source.identity);
            if c.route != input.route {
                c.route.clear();
                c.route.push_str(input.route);
            }
        }
        None => {
            state.current = Some(Current {
                headers: Some(input.headers.clone()),
                protocol: source.protocol,
                direction: input.direction,
                client_id: source.client_id.clone(),
                identity: source.identity.clone(),
                route: input.route.to_string(),
            });
        }
    }
}

fn to_wit<'a>(input: &PluginInput<'a>) -> wit::Message<'a> {
    wit::Message {
        topic: input.topic,
        qos: input.qos,
        key: input.key.map(|k| &k[..]),
        payload: input.payload,
    }
}

/// The outputs of a forward verdict, each the input with the output's changes applied: what a
/// plugin leaves alone is shared with the input, not copied back out of the guest.
fn from_wit(verdict: wit::Verdict, input: &PluginInput<'_>) -> Verdict {
    match verdict {
        wit::Verdict::Forward(outputs) => Verdict::Forward(
            outputs
                .into_iter()
                .map(|o| {
                    let headers = if o.remove_headers.is_empty() && o.set_headers.is_empty() {
                        input.headers.clone()
                    } else {
                        let mut headers = input.headers.to_vec();
                        headers.retain(|h| !o.remove_headers.contains(&h.name));
                        for h in o.set_headers {
                            headers.retain(|existing| existing.name != h.name);
                            headers.push(Header::new(h.name, h.value));
                        }
                        headers.into()
                    };
                    PluginOutput {
                        name: o.name,
                        topic: o.topic.unwrap_or_else(|| input.topic.to_string()),
                        headers,
                        key: match o.key {
                            wit::KeyEdit::Keep => input.key.cloned(),
                            wit::KeyEdit::Set(k) => Some(Bytes::from(k)),
                            wit::KeyEdit::Clear => None,
                        },
                        payload: o.payload.map_or_else(|| input.payload.clone(), Bytes::from),
                    }
                })
                .collect(),
        ),
        wit::Verdict::Drop(reason) => Verdict::Drop(reason),
        wit::Verdict::Reject(reason) => Verdict::Reject(reason),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A `table.grow` past the cap traps instead of making the host allocate the table. (Stable
    /// Rust cannot emit `table.grow`, so this is a core module in text form.)
    #[test]
    fn table_growth_is_capped() {
        let wasm = wat::parse_str(
            r#"(module
                 (table 0 funcref)
                 (func (export "grow") (param i32) (result i32)
                   (table.grow (ref.null func) (local.get 0))))"#,
        )
        .unwrap();
        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, wasm).unwrap();
        let mut store = Store::new(&engine, store_limits(16 << 20));
        store.limiter(|limits| limits);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let grow = instance
            .get_typed_func::<i32, i32>(&mut store, "grow")
            .unwrap();
        assert_eq!(grow.call(&mut store, 1000).unwrap(), 0);
        let over = grow.call(&mut store, MAX_TABLE_ELEMENTS as i32);
        assert!(over.is_err(), "a table grown past the cap must trap");
    }
}
