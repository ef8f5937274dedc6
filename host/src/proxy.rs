//! A running proxy: the snapshot built from a config, the listeners bound to its addresses, and an
//! orderly shutdown that stops accepting, lets deliveries under way finish, then exits.
//!
//! The binary and the integration tests both start the proxy through [`Proxy::start`], so tests
//! exercise exactly what users run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::admin::{AdminListener, AdminState};
use crate::config::Config;
use crate::edge::tls::TlsConfig;
use crate::edge::tls::{self, TlsAcceptor, TlsError};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::pipeline::{BuildError, Pipeline, Resources, Snapshot};
use crate::plugin::PluginEngine;
use crate::protocols::amqp::AmqpListener;
use crate::protocols::amqp::receivers::Receivers;
use crate::protocols::mqtt::subscriptions::Subscribers;
use crate::protocols::mqtt::{Clients, MqttListener};
use crate::reload::{ReloadOutcome, Reloader, spawn_watcher};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The plugin engine could not be created.
    #[error("cannot create the plugin engine: {0}")]
    Engine(String),
    /// A plugin or destination could not be built.
    #[error("{0}")]
    Build(#[from] BuildError),
    /// A listener's certificate, key or CA file cannot serve.
    #[error("{at}: listener {listener:?}: {error}")]
    Tls {
        /// The listener.
        listener: String,
        /// Where its `tls:` is written.
        at: String,
        /// The file and the cause.
        error: TlsError,
    },
    /// A listener could not bind its address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Loads the certificate of a listener with `tls:`.
fn tls_acceptor(
    config: &Config,
    listener: &str,
    tls: Option<&TlsConfig>,
) -> Result<Option<Arc<TlsAcceptor>>, StartError> {
    let Some(tls) = tls else {
        return Ok(None);
    };
    TlsAcceptor::new(listener, tls)
        .map(|a| Some(Arc::new(a)))
        .map_err(|error| StartError::Tls {
            listener: listener.to_string(),
            at: format!(
                "{}:{}:{}",
                config.path.display(),
                tls.location.line,
                tls.location.column
            ),
            error,
        })
}

/// A started proxy.
pub struct Proxy {
    pipeline: Arc<Pipeline>,
    /// Every listener's name and bound address.
    addrs: Vec<(String, SocketAddr)>,
    /// The certificates of the TLS listeners, read again on SIGHUP as well as on change.
    acceptors: Vec<Arc<TlsAcceptor>>,
    admin_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    tracker: TaskTracker,
    listeners: Vec<tokio::task::JoinHandle<()>>,
    // Owns the resources (the embedded Kafka among them, which must outlive every producer that
    // talks to it) and rebuilds snapshots on reload.
    reloader: Arc<std::sync::Mutex<Reloader>>,
}

impl Proxy {
    /// Builds the pipeline from `config`, binds its listeners and starts serving.
    pub async fn start(config: Config) -> Result<Proxy, StartError> {
        let engine = PluginEngine::new().map_err(|e| StartError::Engine(format!("{e:#}")))?;
        let metrics = Metrics::new();
        let subscribers = Arc::new(Subscribers::default());
        let clients = Arc::new(Clients::new(subscribers.clone()));
        let receivers = Arc::new(Receivers::default());
        let resources = Resources {
            engine,
            embedded_kafka: None,
            metrics: metrics.clone(),
            subscribers: subscribers.clone(),
            receivers: receivers.clone(),
            recorders: Default::default(),
            shadows: Default::default(),
        };
        // Compiling plugins blocks for tens of milliseconds each: keep it off the async workers.
        let config = Arc::new(config);
        let build_config = config.clone();
        let (snapshot, resources, files) = tokio::task::spawn_blocking(move || {
            let mut resources = resources;
            let files = build_config.source_files();
            let snapshot = Snapshot::build(&build_config, 1, &mut resources, None, &files);
            (snapshot, resources, files)
        })
        .await
        .map_err(|e| StartError::Engine(format!("build task failed: {e}")))?;
        let pipeline = Arc::new(Pipeline::new(snapshot?));
        metrics.serving(1);

        let limits = Limits::new(&config.listeners.limits, metrics.clone());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let tracker = TaskTracker::new();
        let mut addrs: Vec<(String, SocketAddr)> = Vec::new();
        let mut listeners = Vec::new();
        let mut acceptors = Vec::new();
        for settings in &config.listeners.mqtt {
            let tls = tls_acceptor(&config, &settings.name, settings.tls.as_ref())?;
            acceptors.extend(tls.clone());
            let addr = settings.bind;
            let listener = MqttListener::bind(settings.clone(), tls)
                .await
                .map_err(|source| StartError::Bind { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
            tracing::info!(listener = settings.name, protocol = if settings.websocket.is_some() { "mqtt-ws" } else { "mqtt" }, tls = settings.tls.is_some(), addr = %local, "listening");
            addrs.push((settings.name.clone(), local));
            listeners.push(tokio::spawn(listener.run(
                pipeline.clone(),
                clients.clone(),
                metrics.clone(),
                limits.clone(),
                shutdown_rx.clone(),
                tracker.clone(),
            )));
        }
        for settings in &config.listeners.amqp {
            let tls = tls_acceptor(&config, &settings.name, settings.tls.as_ref())?;
            acceptors.extend(tls.clone());
            let addr = settings.bind;
            let listener = AmqpListener::bind(settings.clone(), tls)
                .await
                .map_err(|source| StartError::Bind { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
            tracing::info!(listener = settings.name, protocol = "amqp", tls = settings.tls.is_some(), addr = %local, "listening");
            addrs.push((settings.name.clone(), local));
            listeners.push(tokio::spawn(listener.run(
                pipeline.clone(),
                receivers.clone(),
                metrics.clone(),
                limits.clone(),
                shutdown_rx.clone(),
                tracker.clone(),
            )));
        }
        if !acceptors.is_empty() {
            match tls::spawn_watcher(acceptors.clone(), metrics.clone(), shutdown_rx.clone()) {
                Ok(handle) => listeners.push(handle),
                // Rotation still works through SIGHUP.
                Err(error) => {
                    tracing::warn!(%error, "cannot watch the certificate files for changes")
                }
            }
        }

        // Sessions whose clients did not come back in time end (their subscriptions go).
        let sweep = clients.clone();
        let sweep_metrics = metrics.clone();
        let mut sweep_stop = shutdown_rx.clone();
        listeners.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        sweep.sessions.expire();
                        sweep_metrics.mqtt_sessions(
                            sweep.subscribers.len(),
                            sweep.sessions.kept(),
                            sweep.subscribers.queued(),
                        );
                    }
                    _ = crate::stopped(&mut sweep_stop) => break,
                }
            }
        }));
        listeners.push(tokio::spawn(crate::sources::run(
            pipeline.clone(),
            metrics.clone(),
            shutdown_rx.clone(),
        )));

        let reloader = Arc::new(std::sync::Mutex::new(Reloader::new(
            &config,
            &files,
            resources,
            pipeline.clone(),
        )));
        match spawn_watcher(reloader.clone(), shutdown_rx.clone()) {
            Ok(handle) => listeners.push(handle),
            // Reloads still work through SIGHUP.
            Err(error) => tracing::warn!(%error, "cannot watch the config for changes"),
        }

        let mut admin_addr = None;
        if let Some(addr) = config.listeners.admin {
            let admin = AdminListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?;
            let local = admin
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
            tracing::info!(listener = "admin", addr = %local, "listening");
            admin_addr = Some(local);
            let state = AdminState {
                pipeline: pipeline.clone(),
                metrics: metrics.clone(),
                reloads: reloader.lock().map(|r| r.log()).unwrap_or_default(),
                config_path: config.path.clone(),
                listeners: addrs.clone(),
            };
            listeners.push(tokio::spawn(admin.run(state, shutdown_rx.clone())));
        }
        Ok(Proxy {
            pipeline,
            addrs,
            acceptors,
            admin_addr,
            metrics,
            shutdown,
            tracker,
            listeners,
            reloader,
        })
    }

    /// The address of the listener named `mqtt`.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.listener_addr("mqtt")
    }

    /// The address of the listener named `amqp`.
    pub fn amqp_addr(&self) -> Option<SocketAddr> {
        self.listener_addr("amqp")
    }

    /// The address the listener `name` is bound to (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, addr)| *addr)
    }

    /// The admin endpoint's address, when `admin` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The proxy's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The embedded Kafka's bootstrap address, when a destination uses `bootstrap: embedded`.
    pub fn embedded_kafka_bootstrap(&self) -> Option<String> {
        self.reloader
            .lock()
            .ok()
            .and_then(|r| r.embedded_kafka_bootstrap())
    }

    /// Reads the config file again and applies it whole, or changes nothing (see
    /// [`ReloadOutcome`]). Concurrent reloads run one after the other.
    pub async fn reload(&self) -> ReloadOutcome {
        // Certificates first: a SIGHUP is also how an operator says a rotated certificate is in
        // place, and their outcome is logged on its own.
        let acceptors = self.acceptors.clone();
        let metrics = self.metrics.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for acceptor in &acceptors {
                acceptor.reload_logged(&metrics);
            }
        })
        .await;
        let reloader = self.reloader.clone();
        tokio::task::spawn_blocking(move || match reloader.lock() {
            Ok(mut r) => r.reload(),
            Err(_) => ReloadOutcome::Rejected("an earlier reload failed midway".into()),
        })
        .await
        .unwrap_or_else(|e| ReloadOutcome::Rejected(format!("reload task failed: {e}")))
    }

    /// The pipeline (for swapping in a new snapshot).
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Stops accepting, tells clients the server is going away once their acknowledgements are
    /// sent, and waits up to `grace` for deliveries under way. Returns whether all finished.
    pub async fn shutdown(self, grace: Duration) -> bool {
        // One deadline for all of it: listeners that are slow to stop (an admin request waiting
        // on a broker probe) count against the same grace as the deliveries.
        let deadline = tokio::time::Instant::now() + grace;
        let _ = self.shutdown.send(true);
        self.tracker.close();
        let mut listeners = self.listeners;
        let tracker = self.tracker.clone();
        let drained = tokio::time::timeout_at(deadline, async {
            for listener in &mut listeners {
                let _ = listener.await;
            }
            tracker.wait().await;
        })
        .await
        .is_ok();
        if drained {
            tracing::info!("drained");
        } else {
            for listener in &listeners {
                listener.abort();
            }
            tracing::warn!(grace = ?grace, "grace period over with deliveries still under way");
        }
        // Producers go before the embedded Kafka they talk to, so they do not report it gone.
        drop(self.pipeline);
        drop(self.reloader);
        drained
    }
}
