//! The admin endpoint: an HTTP listener (`admin.bind`, loopback by default) for orchestrators and
//! operators.
//!
//! - `GET /healthz`: the process serves (liveness).
//! - `GET /readyz`: every destination of the serving snapshot answers a probe (readiness); 503
//!   with the failing ones otherwise.
//! - `GET /status`: JSON with the snapshot generation, plugins and their sha256 digests, routes,
//!   destinations and their state, and the last reload's outcome with its errors.
//! - `GET /metrics`: every metric in the Prometheus text format (OpenMetrics 1.0).
//!
//! It reads what the data path publishes (the serving snapshot, the metrics, the reload log) and
//! changes nothing, so it needs no lock the data path takes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::join_all;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::brokers::kafka::Bootstrap;
use crate::config::DestinationKind;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Snapshot};
use crate::reload::{ReloadLog, ReloadOutcome};

/// How long `/readyz` and `/status` wait for a destination's probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The content type of the OpenMetrics text format, which Prometheus scrapes natively.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the endpoint reports on.
#[derive(Clone)]
pub struct AdminState {
    /// The pipeline whose serving snapshot is described.
    pub pipeline: Arc<Pipeline>,
    /// The metrics served by `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The last reload's outcome.
    pub reloads: Arc<ReloadLog>,
    /// The config file the proxy runs from.
    pub config_path: PathBuf,
    /// The client listeners' addresses, by name.
    pub listeners: Vec<(String, SocketAddr)>,
}

/// A bound admin listener, not yet serving.
pub struct AdminListener {
    listener: TcpListener,
}

impl AdminListener {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(AdminListener {
            listener: TcpListener::bind(addr).await?,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves requests until `shutdown` turns true.
    pub async fn run(self, state: AdminState, mut shutdown: watch::Receiver<bool>) {
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/status", get(status))
            .route("/metrics", get(metrics))
            .with_state(Arc::new(state));
        let stop = async move { crate::stopped(&mut shutdown).await };
        if let Err(error) = axum::serve(self.listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(%error, "admin endpoint stopped");
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let snapshot = state.pipeline.snapshot();
    let probes = probe_all(&snapshot).await;
    let unready: Vec<Value> = probes
        .iter()
        .filter_map(|(name, result)| {
            result
                .as_ref()
                .err()
                .map(|e| json!({ "destination": name, "error": e }))
        })
        .collect();
    let code = if unready.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "ready": unready.is_empty(), "unreachable": unready });
    (code, axum::Json(body)).into_response()
}

async fn status(State(state): State<Arc<AdminState>>) -> Response {
    let snapshot = state.pipeline.snapshot();
    let probes = probe_all(&snapshot).await;

    let plugins: Vec<Value> = snapshot
        .plugins()
        .values()
        .map(|p| {
            json!({
                "name": p.name(),
                "wasm": p.wasm().display().to_string(),
                "sha256": p.digest(),
                "timeout_ms": p.timeout().as_millis(),
                "memory_bytes": p.memory_bytes(),
            })
        })
        .collect();
    let routes: Vec<Value> = snapshot
        .routes()
        .routes()
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "from": format!("{}:{}", r.protocol, r.filter),
                "plugins": r.plugins,
                "to": r.to.to_string(),
                "outputs": r.outputs.iter().map(|(k, v)| (k.clone(), json!(v.to_string()))).collect::<serde_json::Map<_, _>>(),
                "on_error": r.on_error.to_string(),
            })
        })
        .collect();
    let destinations: Vec<Value> = probes
        .iter()
        .map(|(name, result)| {
            let mut d = describe_destination(snapshot.destination_kind(name));
            d["name"] = json!(name);
            match result {
                Ok(()) => d["state"] = json!("reachable"),
                Err(e) => {
                    d["state"] = json!("unreachable");
                    d["error"] = json!(e);
                }
            }
            d
        })
        .collect();
    let last_reload = state.reloads.last().map(|r| {
        let at =
            r.at.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default();
        let mut v = json!({ "result": r.outcome.result(), "at_unix_ms": at, "errors": [] });
        match &r.outcome {
            ReloadOutcome::Applied { generation } => v["generation"] = json!(generation),
            ReloadOutcome::Rejected(errors) | ReloadOutcome::RestartNeeded(errors) => {
                v["errors"] = json!(errors.lines().collect::<Vec<_>>())
            }
        }
        v
    });
    let listeners: serde_json::Map<String, Value> = state
        .listeners
        .iter()
        .map(|(name, addr)| (name.clone(), json!(addr.to_string())))
        .collect();
    axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config": state.config_path.display().to_string(),
        "generation": snapshot.generation,
        "listeners": listeners,
        "plugins": plugins,
        "routes": routes,
        "unmatched": snapshot.unmatched().to_string(),
        "destinations": destinations,
        "last_reload": last_reload,
    }))
    .into_response()
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS)],
        state.metrics.encode(),
    )
        .into_response()
}

/// Probes every destination of `snapshot` at once, each bounded by [`PROBE_TIMEOUT`].
async fn probe_all(snapshot: &Snapshot) -> Vec<(String, Result<(), String>)> {
    let probes = snapshot.destinations().into_iter().map(|(name, d)| {
        let probe = d.probe();
        async move {
            let result = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
            };
            (name.to_string(), result)
        }
    });
    join_all(probes).await
}

/// A destination's settings, without secrets.
fn describe_destination(kind: Option<&DestinationKind>) -> Value {
    match kind {
        Some(DestinationKind::Kafka(k)) => json!({
            "kind": "kafka",
            "bootstrap": match &k.bootstrap {
                Bootstrap::Embedded => "embedded".to_string(),
                Bootstrap::Servers(s) => s.clone(),
            },
        }),
        Some(DestinationKind::Amqp(a)) => json!({ "kind": "amqp", "url": a.redacted_url() }),
        None => json!({}),
    }
}
