//! Reload: read routes.yaml again, build a new snapshot next to the serving one, and swap it in
//! whole, or change nothing and say why.
//!
//! Unchanged plugins (same file digest, config and limits) and destinations (same settings) are
//! carried over, so a reload neither recompiles them nor reconnects to brokers. Messages under way
//! finish on the snapshot they started on. Listener changes need a restart and are refused as
//! such, never half-applied.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify::RecursiveMode;
use tokio::sync::{mpsc, watch};

use crate::config::{Config, ConfigError, DestinationKind, Listeners, SourceFiles};
use crate::pipeline::{Pipeline, Resources, Snapshot};
use crate::plugin::{Plugin, PluginEngine};
use crate::router::Route;

/// How long file events settle before a reload is considered: editors and ConfigMap updates write
/// in several steps within a few milliseconds. Short, because it is part of every edit's delay; a
/// file caught half-written is rejected (nothing changes) and its last write brings the reload
/// that applies it.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new snapshot serves every message from now on.
    Applied {
        /// Its generation.
        generation: u64,
    },
    /// The file or a plugin is wrong; the previous snapshot keeps serving.
    Rejected(String),
    /// The change needs a restart (listener addresses or limits); nothing was applied.
    RestartNeeded(String),
}

impl ReloadOutcome {
    /// `applied`, `rejected` or `restart_needed`: the metric label and the status field.
    pub fn result(&self) -> &'static str {
        match self {
            ReloadOutcome::Applied { .. } => "applied",
            ReloadOutcome::Rejected(_) => "rejected",
            ReloadOutcome::RestartNeeded(_) => "restart_needed",
        }
    }
}

/// One reload attempt and when it finished.
#[derive(Debug, Clone)]
pub struct ReloadRecord {
    /// When it finished.
    pub at: SystemTime,
    /// What it did.
    pub outcome: ReloadOutcome,
}

/// The last reload attempt, shared with the admin endpoint. Kept apart from the [`Reloader`],
/// whose lock is held while plugins compile, so `/status` never waits for a reload.
#[derive(Debug, Default)]
pub struct ReloadLog {
    last: Mutex<Option<ReloadRecord>>,
}

impl ReloadLog {
    /// The last attempt, if there was one since the proxy started.
    pub fn last(&self) -> Option<ReloadRecord> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    fn record(&self, outcome: &ReloadOutcome) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(ReloadRecord {
                at: SystemTime::now(),
                outcome: outcome.clone(),
            });
        }
    }
}

/// Owns what building a snapshot needs, and rebuilds on request.
pub struct Reloader {
    // Declared (so dropped) before `resources`: producers go before the embedded Kafka.
    pipeline: Arc<Pipeline>,
    path: PathBuf,
    listeners: Listeners,
    resources: Resources,
    /// The plugin files the last readable config named.
    plugin_files: Vec<PathBuf>,
    /// The contents last tried, applied or not: a watcher reloads only when they change, so an
    /// invalid edit is reported once.
    last_tried: Option<[u8; 32]>,
    /// What the last applied reload changed, for its log line.
    last_changes: String,
    log: Arc<ReloadLog>,
}

impl Reloader {
    /// A reloader for the proxy started from `config`, whose snapshot was built from `files`.
    pub fn new(
        config: &Config,
        files: &SourceFiles,
        resources: Resources,
        pipeline: Arc<Pipeline>,
    ) -> Self {
        Reloader {
            path: config.path.clone(),
            listeners: config.listeners.clone(),
            resources,
            pipeline,
            plugin_files: plugin_files(config),
            last_tried: Some(files.fingerprint()),
            last_changes: String::new(),
            log: Arc::default(),
        }
    }

    /// Where the outcome of the last reload is kept.
    pub fn log(&self) -> Arc<ReloadLog> {
        self.log.clone()
    }

    /// What compiles new plugin builds ahead of a reload.
    pub fn warm_up(&self) -> WarmUp {
        WarmUp {
            path: self.path.clone(),
            engine: self.resources.engine.clone(),
        }
    }

    /// The files whose change can change the snapshot: the config and every plugin it names.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        std::iter::once(self.path.clone())
            .chain(self.plugin_files.iter().cloned())
            .collect()
    }

    /// Reloads if the config or a plugin file changed since the last attempt; `None` if not.
    pub fn reload_if_changed(&mut self) -> Option<ReloadOutcome> {
        let files = SourceFiles::default();
        let loaded = Config::load_from(&files, &self.path);
        // Read every plugin file now, so the digest covers them; the build reuses these bytes.
        let plugins = match &loaded {
            Ok(c) => plugin_files(c),
            Err(_) => self.plugin_files.clone(),
        };
        for path in &plugins {
            let _ = files.read(path);
        }
        if self.last_tried == Some(files.fingerprint()) {
            return None;
        }
        Some(self.apply(loaded, &files))
    }

    /// The embedded Kafka's bootstrap address, once started.
    pub fn embedded_kafka_bootstrap(&self) -> Option<String> {
        self.resources
            .embedded_kafka
            .as_ref()
            .map(|k| k.bootstrap().to_string())
    }

    /// Reads, validates and builds the config, then swaps it in. Blocks while plugins compile:
    /// call it off the async worker threads.
    pub fn reload(&mut self) -> ReloadOutcome {
        let files = SourceFiles::default();
        let loaded = Config::load_from(&files, &self.path);
        self.apply(loaded, &files)
    }

    /// Applies a config just read through `files` (or the error reading it), and logs the
    /// outcome.
    fn apply(&mut self, loaded: Result<Config, ConfigError>, files: &SourceFiles) -> ReloadOutcome {
        let outcome = self.try_apply(loaded, files);
        self.log.record(&outcome);
        self.resources.metrics.reloaded(outcome.result());
        match &outcome {
            ReloadOutcome::Applied { generation } => {
                self.resources.metrics.serving(*generation);
                let changes = std::mem::take(&mut self.last_changes);
                tracing::info!(config = %self.path.display(), generation, %changes, "reload applied")
            }
            ReloadOutcome::Rejected(errors) => {
                tracing::error!(config = %self.path.display(), "reload rejected, previous routes keep serving:\n{errors}")
            }
            ReloadOutcome::RestartNeeded(why) => {
                tracing::warn!(config = %self.path.display(), "reload not applied: {why}")
            }
        }
        outcome
    }

    fn try_apply(
        &mut self,
        loaded: Result<Config, ConfigError>,
        files: &SourceFiles,
    ) -> ReloadOutcome {
        let config = match loaded {
            Ok(c) => c,
            Err(e) => {
                for path in &self.plugin_files {
                    let _ = files.read(path);
                }
                self.last_tried = Some(files.fingerprint());
                return ReloadOutcome::Rejected(e.to_string());
            }
        };
        self.plugin_files = plugin_files(&config);
        if config.listeners != self.listeners {
            for path in &self.plugin_files {
                let _ = files.read(path);
            }
            self.last_tried = Some(files.fingerprint());
            return ReloadOutcome::RestartNeeded(
                "listener settings changed; restart the proxy to apply them".into(),
            );
        }
        let current = self.pipeline.snapshot();
        let generation = current.generation + 1;
        let built = Snapshot::build(
            &config,
            generation,
            &mut self.resources,
            Some(&current),
            files,
        );
        // The build read every plugin file through `files`: the digest is of what was compiled.
        self.last_tried = Some(files.fingerprint());
        match built {
            Ok(snapshot) => {
                self.last_changes = describe_changes(&current, &snapshot);
                self.pipeline.swap(snapshot);
                ReloadOutcome::Applied { generation }
            }
            Err(e) => ReloadOutcome::Rejected(e.to_string()),
        }
    }
}

/// What a new snapshot changes from the serving one, for the reload's log line: `plugins
/// changed: enrich; routes added: alerts` (or `nothing`, for an edit of comments).
fn describe_changes(old: &Snapshot, new: &Snapshot) -> String {
    fn diff<'a, T>(
        old: &BTreeMap<&'a str, T>,
        new: &BTreeMap<&'a str, T>,
        same: impl Fn(&T, &T) -> bool,
    ) -> [Vec<&'a str>; 3] {
        let added = new
            .keys()
            .filter(|k| !old.contains_key(*k))
            .copied()
            .collect();
        let removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .copied()
            .collect();
        let changed = new
            .iter()
            .filter(|(k, v)| old.get(*k).is_some_and(|o| !same(o, v)))
            .map(|(k, _)| *k)
            .collect();
        [added, removed, changed]
    }
    fn routes(s: &Snapshot) -> BTreeMap<&str, &Route> {
        s.routes()
            .routes()
            .iter()
            .map(|r| (r.name.as_str(), r))
            .collect()
    }
    fn kinds(s: &Snapshot) -> BTreeMap<&str, Option<&DestinationKind>> {
        s.destinations()
            .keys()
            .map(|name| (*name, s.destination_kind(name)))
            .collect()
    }
    // A plugin the new snapshot reused is the very same instance pool: unchanged.
    let parts = [
        (
            "plugins",
            diff(&old.plugins(), &new.plugins(), |a, b| std::ptr::eq(*a, *b)),
        ),
        ("routes", diff(&routes(old), &routes(new), |a, b| a == b)),
        (
            "destinations",
            diff(&kinds(old), &kinds(new), |a, b| a == b),
        ),
    ];
    let mut out = Vec::new();
    for (what, [added, removed, changed]) in parts {
        for (how, names) in [("added", added), ("removed", removed), ("changed", changed)] {
            if !names.is_empty() {
                out.push(format!("{what} {how}: {}", names.join(", ")));
            }
        }
    }
    if old.auth() != new.auth() {
        out.push("auth changed".to_string());
    }
    if old.unmatched() != new.unmatched() {
        out.push("unmatched changed".to_string());
    }
    if out.is_empty() {
        "nothing".to_string()
    } else {
        out.join("; ")
    }
}

fn plugin_files(config: &Config) -> Vec<PathBuf> {
    config.plugins.values().map(|p| p.wasm.clone()).collect()
}

/// Watches the directories of the config and of every plugin it names, and reloads when their
/// contents change, until `shutdown`.
///
/// Directories are watched rather than files: editors save by renaming a new file over the old
/// one, and Kubernetes swaps a `..data` symlink; a watch on the file itself goes silent after the
/// first such save.
pub fn spawn_watcher(
    reloader: Arc<Mutex<Reloader>>,
    shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, notify::Error> {
    let (files, warm_up) = match reloader.lock() {
        Ok(r) => (r.watched_files(), Some(r.warm_up())),
        Err(_) => (Vec::new(), None),
    };
    watch_files(
        files,
        shutdown,
        move || {
            let mut r = reloader.lock().ok()?;
            r.reload_if_changed();
            Some(r.watched_files())
        },
        warm_up.map(|warm_up| move || warm_up.run()),
    )
}

/// Compiles the plugin builds routes.yaml names as soon as a file changes, while the reload
/// still waits for the save to settle ([`DEBOUNCE`]): compiling a new build is most of a plugin
/// swap's time, and the reload then finds it compiled, or waits for the compile under way rather
/// than starting another (see `PluginEngine::component`). Nothing is applied here; a file read
/// half-written fails to parse or compile and costs only that attempt.
#[derive(Clone)]
pub struct WarmUp {
    path: PathBuf,
    engine: PluginEngine,
}

impl WarmUp {
    /// Reads routes.yaml and compiles every plugin build it names that the engine has not
    /// compiled yet. Blocks: call it off the async worker threads.
    pub fn run(&self) {
        let files = SourceFiles::default();
        let Ok(config) = Config::load_from(&files, &self.path) else {
            return;
        };
        for plugin in config.plugins.values() {
            if let Ok(bytes) = files.read(&plugin.wasm) {
                Plugin::compile_ahead(&self.engine, &bytes);
            }
        }
    }
}

/// The longest a reload waits for the files to settle: a directory that never stays quiet for
/// [`DEBOUNCE`] (a busy file next to routes.yaml) still gets its changes considered this often.
const MAX_SETTLE: Duration = Duration::from_millis(500);

/// Watches the directories of `files`. At the first change after a quiet spell it runs `early`, if
/// given, on a blocking thread, without waiting for it (the routes watcher starts compiling new plugin
/// builds there); once the changes have settled for [`DEBOUNCE`] (at most [`MAX_SETTLE`] after
/// the first) it runs `changed` on a blocking thread, which returns the files to watch from then
/// on (`None`: the same). Shared by the routes.yaml watcher and the TLS certificate watcher.
pub(crate) fn watch_files<F, E>(
    files: Vec<PathBuf>,
    mut shutdown: watch::Receiver<bool>,
    changed: F,
    early: Option<E>,
) -> Result<tokio::task::JoinHandle<()>, notify::Error>
where
    F: Fn() -> Option<Vec<PathBuf>> + Send + Sync + 'static,
    E: Fn() + Send + Sync + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    })?;
    let mut watched = BTreeSet::new();
    watch_parents(&mut watcher, &mut watched, &files);
    let changed = Arc::new(changed);
    let early = early.map(Arc::new);

    // Our own reads show up as access events; only writes, creations, renames and removals can
    // change anything.
    fn relevant(event: &notify::Result<notify::Event>) -> bool {
        match event {
            Ok(event) => !event.kind.is_access(),
            Err(error) => {
                tracing::warn!(%error, "file watch error");
                true
            }
        }
    }

    Ok(tokio::spawn(async move {
        let mut files = files;
        loop {
            tokio::select! {
                Some(event) = rx.recv() => if !relevant(&event) { continue },
                _ = crate::stopped(&mut shutdown) => break,
            }
            if let Some(early) = early.clone() {
                drop(tokio::task::spawn_blocking(move || early()));
            }

            let first = tokio::time::Instant::now();
            let mut settled = first + DEBOUNCE;
            loop {
                tokio::select! {
                    Some(event) = rx.recv() => if relevant(&event) {
                        settled = (tokio::time::Instant::now() + DEBOUNCE).min(first + MAX_SETTLE);
                    },
                    _ = tokio::time::sleep_until(settled) => break,
                    _ = crate::stopped(&mut shutdown) => return,
                }
            }
            let changed = changed.clone();
            if let Ok(Some(now)) = tokio::task::spawn_blocking(move || changed()).await {
                files = now;
            }
            watch_parents(&mut watcher, &mut watched, &files);
        }
    }))
}

fn watch_parents(
    watcher: &mut impl notify::Watcher,
    watched: &mut BTreeSet<PathBuf>,
    files: &[PathBuf],
) {
    for dir in files.iter().flat_map(|f| dirs_to_watch(f)) {
        if watched.contains(&dir) {
            continue;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::debug!(dir = %dir.display(), "watching");
                watched.insert(dir);
            }
            Err(error) => tracing::warn!(dir = %dir.display(), %error, "cannot watch"),
        }
    }
}

/// The directories whose changes can change `file`, as its path resolves now: its directory, the
/// directory of every symlink on its way (where re-pointing the symlink shows up, as with
/// `plugins/current -> release-7`), and the directory of the file it finally resolves to. They
/// are worked out again after every reload, so a re-pointed symlink's new target is watched too.
fn dirs_to_watch(file: &Path) -> Vec<PathBuf> {
    let parent = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let resolved = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mut dirs = vec![resolved(&parent)];
    let mut prefix = PathBuf::new();
    for component in file.components() {
        prefix.push(component);
        if prefix.is_symlink()
            && let Some(dir) = prefix.parent()
        {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            dirs.push(resolved(dir));
        }
    }
    if let Some(target_dir) = std::fs::canonicalize(file)
        .ok()
        .and_then(|t| t.parent().map(Path::to_path_buf))
    {
        dirs.push(target_dir);
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::metrics::Metrics;
    use crate::plugin::PluginEngine;

    fn yaml(topic: &str) -> String {
        format!(
            "listeners: {{ mqtt: {{ bind: \"127.0.0.1:0\" }} }}\n\
             destinations: {{ k: {{ kind: kafka, bootstrap: \"127.0.0.1:1\" }} }}\n\
             routes: [ {{ name: r, from: \"mqtt:#\", to: \"k:{topic}\" }} ]\n"
        )
    }

    /// What a snapshot needs, with no embedded Kafka.
    fn resources(engine: PluginEngine) -> Resources {
        Resources {
            engine,
            embedded_kafka: None,
            metrics: Metrics::new(),
            subscribers: Default::default(),
            receivers: Default::default(),
            recorders: Default::default(),
            shadows: Default::default(),
        }
    }

    /// An edit that lands while an attempt builds was not what the attempt compiled: the next look
    /// at the files applies it. (Digesting a second read of the files marked it as tried.)
    #[test]
    fn an_edit_during_an_attempt_is_applied_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, yaml("one")).unwrap();
        let config = Config::load(&path).unwrap();
        let mut resources = resources(PluginEngine::new().unwrap());
        let files = config.source_files();
        let snapshot = Snapshot::build(&config, 1, &mut resources, None, &files).unwrap();
        let pipeline = Arc::new(Pipeline::new(snapshot));
        let mut reloader = Reloader::new(&config, &files, resources, pipeline.clone());
        assert_eq!(reloader.reload_if_changed(), None, "nothing changed yet");

        // An attempt reads "two"; "three" is saved while it builds.
        std::fs::write(&path, yaml("two")).unwrap();
        let files = SourceFiles::default();
        let loaded = Config::load_from(&files, &path);
        std::fs::write(&path, yaml("three")).unwrap();
        assert_eq!(
            reloader.apply(loaded, &files),
            ReloadOutcome::Applied { generation: 2 }
        );
        let to = |p: &Pipeline| p.snapshot().routes().routes()[0].to.to_string();
        assert_eq!(to(&pipeline), "k:two");

        // The watcher's next look sees that "three" was never tried, and applies it.
        assert_eq!(
            reloader.reload_if_changed(),
            Some(ReloadOutcome::Applied { generation: 3 })
        );
        assert_eq!(to(&pipeline), "k:three");
        assert_eq!(reloader.reload_if_changed(), None);
    }

    /// The warm-up compiles the build an edit names, and the reload that follows finds it
    /// compiled; a file caught half-written costs the warm-up nothing.
    #[test]
    fn a_new_build_is_compiled_ahead_of_its_reload() {
        let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist");
        let yaml = |build: &str| {
            format!(
                "listeners: {{ mqtt: {{ bind: \"127.0.0.1:0\" }} }}\n\
                 destinations: {{ k: {{ kind: kafka, bootstrap: \"127.0.0.1:1\" }} }}\n\
                 plugins: {{ p: {{ wasm: \"{}\", config: {{ behaviour: none }} }} }}\n\
                 routes: [ {{ name: r, from: \"mqtt:#\", plugins: [p], to: \"k:t\" }} ]\n",
                dist.join(build).display()
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, yaml("chaos.wasm")).unwrap();
        let config = Config::load(&path).unwrap();
        let engine = PluginEngine::new().unwrap();
        let mut resources = resources(engine.clone());
        let files = config.source_files();
        let snapshot = Snapshot::build(&config, 1, &mut resources, None, &files)
            .expect("plugins/dist is missing: run `make plugins`");
        let pipeline = Arc::new(Pipeline::new(snapshot));
        let mut reloader = Reloader::new(&config, &files, resources, pipeline);
        assert_eq!(engine.compiles(), 1);

        let whole = yaml("chaos-build2.wasm");
        std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        reloader.warm_up().run();
        assert_eq!(engine.compiles(), 1, "half a file names nothing to compile");

        std::fs::write(&path, &whole).unwrap();
        reloader.warm_up().run();
        assert_eq!(engine.compiles(), 2);
        assert_eq!(
            reloader.reload_if_changed(),
            Some(ReloadOutcome::Applied { generation: 2 })
        );
        assert_eq!(engine.compiles(), 2, "the reload found the build compiled");
    }

    /// A reload's log line says what changed.
    #[test]
    fn changes_are_named() {
        let build = |text: &str, generation| {
            let config = Config::parse(Path::new("routes.yaml"), text).unwrap();
            let mut resources = resources(PluginEngine::new().unwrap());
            Snapshot::build(
                &config,
                generation,
                &mut resources,
                None,
                &config.source_files(),
            )
            .unwrap()
        };
        let one = build(&yaml("one"), 1);
        let two = build(
            &format!(
                "{}  - {{ name: extra, from: \"amqp:#\", to: \"k:x\" }}\n",
                yaml("two")
                    .replace("routes: [", "routes:\n  -")
                    .replace(" ]\n", "\n")
            ),
            2,
        );
        assert_eq!(
            describe_changes(&one, &two),
            "routes added: extra; routes changed: r"
        );
        assert_eq!(describe_changes(&one, &one), "nothing");
    }
}
