//! The admin endpoint: an HTTP listener (`admin.bind`, loopback by default) for orchestrators and
//! operators.
//!
//! - `GET /healthz`: the process serves (liveness).
//! - `GET /readyz`: every destination of the serving snapshot answers a probe (readiness); 503
//!   with the failing ones otherwise.
//! - `GET /status`: JSON with the snapshot generation, plugins and their sha256 digests, routes
//!   (with their shadow and canary), destinations and their state, the last reload's outcome
//!   with its errors, and the latest differences of each route's shadow.
//! - `GET /metrics`: every metric in the Prometheus text format (OpenMetrics 1.0).
//! - `GET /record?route=NAME&count=N[&outputs=true][&max_bytes=B][&timeout_s=S]`: streams the
//!   route's next N messages as JSON lines (see [`crate::recorder`]); `barnabas record` is its
//!   client. The only request that watches the data path rather than reading what it published.
//!
//! It reads what the data path publishes (the serving snapshot, the metrics, the reload log) and
//! changes nothing, so it needs no lock the data path takes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::extract::{RawQuery, State};
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
            .route(
                "/record",
                get(record).with_state((state.pipeline.clone(), shutdown.clone())),
            )
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

/// Bytes of recorded lines gathered into one chunk of the response, at most (about).
const RECORD_CHUNK: usize = 64 * 1024;

/// How long a recording runs when its request does not say.
const DEFAULT_RECORD_SECONDS: u64 = 3600;

async fn record(
    State((pipeline, mut shutdown)): State<(Arc<Pipeline>, watch::Receiver<bool>)>,
    RawQuery(query): RawQuery,
) -> Response {
    let mut route = None;
    let mut count = None;
    let mut outputs = false;
    let mut max_bytes = crate::recorder::MAX_BYTES;
    let mut seconds = DEFAULT_RECORD_SECONDS;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let number = || value.parse::<u64>().ok();
        match &*key {
            "route" => route = Some(value.to_string()),
            "count" => count = number(),
            "outputs" => outputs = value == "true",
            "max_bytes" => max_bytes = number().unwrap_or(max_bytes),
            "timeout_s" => seconds = number().unwrap_or(seconds),
            _ => {}
        }
    }
    let (Some(route), Some(count)) = (route, count) else {
        return (
            StatusCode::BAD_REQUEST,
            "record needs ?route=NAME&count=N\n",
        )
            .into_response();
    };
    let snapshot = pipeline.snapshot();
    if snapshot.routes().named(&route).is_none() {
        return (
            StatusCode::NOT_FOUND,
            format!("no route {route:?} in the serving config\n"),
        )
            .into_response();
    }
    let recorders = snapshot.recorders().clone();
    let (recording, mut lines) = recorders.start(&route, count, max_bytes, outputs);
    tracing::info!(route, count, outputs, "recording started");
    let stream = async_stream(move |tx| async move {
        let deadline = tokio::time::sleep(Duration::from_secs(seconds));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                line = lines.recv() => match line {
                    Some(line) => {
                        // Whatever else is waiting goes in the same chunk: one write for many
                        // lines under load.
                        let mut chunk = line + "\n";
                        while chunk.len() < RECORD_CHUNK {
                            match lines.try_recv() {
                                Ok(more) => {
                                    chunk += &more;
                                    chunk.push('\n');
                                }
                                Err(_) => break,
                            }
                        }
                        if tx.send(chunk).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                _ = &mut deadline => break,
                _ = tx.closed() => break,
                _ = crate::stopped(&mut shutdown) => break,
            }
        }
        recorders.stop(&recording);
        let skipped = recording.skipped();
        if skipped > 0 {
            let _ = tx
                .send(format!(
                    "# {skipped} messages not recorded: the client read too slowly\n"
                ))
                .await;
        }
        tracing::info!(route, skipped, "recording ended");
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(axum::body::Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A stream of what `produce` sends, ending when it returns. The producer runs as a task of its
/// own, so it finishes (and stops its recording) even if the client hangs up first.
fn async_stream<F, Fut>(
    produce: F,
) -> impl futures::Stream<Item = Result<String, std::convert::Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<String>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(produce(tx));
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok(line), rx))
    })
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
                "shadow": r.shadow,
                "canary": r.canary.as_ref().map(|c| json!({ "plugins": c.plugins, "percent": c.percent })),
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
        "shadow_differences": snapshot.shadow_samples(),
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
