//! The reload benchmark: how long a routes.yaml edit takes from the file write to serving, and how
//! far throughput dips while it is applied, under steady MQTT QoS 1 load.
//!
//! The proxy runs in this process (the scenario reads its snapshot generation to time the swap).
//! Edits alternate between swapping the plugin build (two builds of the `chaos` fixture, so every
//! edit compiles a component) and changing the route's Kafka topic.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use barnabas::{Config, Proxy};

use crate::load::{Load, LoadReport, MqttVersion, publish_once};

/// The scenario's knobs.
#[derive(Debug, Clone, clap::Args)]
pub struct ReloadArgs {
    /// MQTT connections publishing flat out.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// QoS 1 messages in flight per connection.
    #[arg(long, default_value_t = 32)]
    pub window: u16,
    /// Edits of routes.yaml.
    #[arg(long, default_value_t = 10)]
    pub edits: usize,
    /// Time between edits, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub interval_ms: u64,
    /// Kafka bootstrap servers; the proxy's embedded Kafka when unset.
    #[arg(long)]
    pub kafka: Option<String>,
    /// Where the built plugins are (`make plugins`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/dist"))]
    pub plugins: PathBuf,
}

/// One edit's timings.
#[derive(Debug, Clone)]
pub struct Edit {
    /// What changed.
    pub change: &'static str,
    /// From the write to the new snapshot being the one new messages start on.
    pub applied: Duration,
    /// From the write to a probe message processed by the new snapshot being acknowledged.
    pub served: Duration,
    /// The lowest 100 ms throughput in the second after the write, in messages per second.
    pub lowest_rate: f64,
}

/// The scenario's result.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    /// Per edit.
    pub edits: Vec<Edit>,
    /// Median throughput away from any edit, in messages per second.
    pub baseline_rate: f64,
    /// Messages acknowledged with success.
    pub acked: usize,
    /// Messages refused (any other reason code).
    pub refused: usize,
    /// Connections that ended early.
    pub errors: Vec<String>,
}

const SAMPLE: Duration = Duration::from_millis(100);

fn routes(dir: &Path, kafka: &str, topic: &str, build: u8) -> String {
    let wasm = dir.join(format!("stamp-{build}.wasm"));
    format!(
        r#"listeners:
  mqtt: {{ bind: "127.0.0.1:0" }}
destinations:
  kafka: {{ kind: kafka, bootstrap: "{kafka}", options: {{ linger.ms: 1 }} }}
plugins:
  stamp: {{ wasm: "{wasm}", config: {{ behaviour: none, stamp_build: true }} }}
routes:
  - name: bench
    from: "mqtt:bench/#"
    plugins: [stamp]
    to: "kafka:{topic}"
"#,
        wasm = wasm.display()
    )
}

fn save(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Runs the scenario.
pub async fn run(args: &ReloadArgs) -> anyhow::Result<ReloadReport> {
    let dir = tempfile::tempdir()?;
    for (build, file) in [(1, "chaos.wasm"), (2, "chaos-build2.wasm")] {
        let from = args.plugins.join(file);
        std::fs::copy(&from, dir.path().join(format!("stamp-{build}.wasm")))
            .with_context(|| format!("{}: run `make plugins` first", from.display()))?;
    }
    let kafka = args.kafka.clone().unwrap_or_else(|| "embedded".into());
    let (mut topic, mut build) = ("bench.a", 1u8);
    let path = dir.path().join("routes.yaml");
    save(&path, &routes(dir.path(), &kafka, topic, build))?;
    let proxy = Proxy::start(Config::load(&path)?).await?;
    let addr = proxy.mqtt_addr().context("no MQTT listener")?;

    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let loads: Vec<_> = (0..args.clients)
        .map(|i| {
            tokio::spawn(
                Load {
                    addr,
                    client_id: format!("load{i}"),
                    topic: format!("bench/dev{i}"),
                    window: args.window,
                    stop: stop.clone(),
                    acked_counter: counter.clone(),
                    count: None,
                    pad: 0,
                    version: MqttVersion::V5,
                    qos: 1,
                    rate: None,
                    tls: None,
                }
                .run(),
            )
        })
        .collect();
    let samples = sample(counter.clone(), stop.clone());

    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut writes = Vec::new();
    let mut timings = Vec::new();
    for i in 0..args.edits {
        let change = if i % 2 == 0 {
            build = 3 - build;
            "plugin build"
        } else {
            topic = if topic == "bench.a" {
                "bench.b"
            } else {
                "bench.a"
            };
            "route topic"
        };
        let before = proxy.pipeline().snapshot().generation;
        let written = Instant::now();
        save(&path, &routes(dir.path(), &kafka, topic, build))?;
        while proxy.pipeline().snapshot().generation == before {
            if written.elapsed() > Duration::from_secs(10) {
                bail!("edit {i} was not applied within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let applied = written.elapsed();
        let code = publish_once(addr, "probe", "bench/probe", format!("probe-{i}")).await?;
        if code != 0 {
            bail!("probe {i} refused with reason code {code:#04x}");
        }
        let served = written.elapsed();
        writes.push(written);
        timings.push((change, applied, served));
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }

    stop.store(true, Ordering::Relaxed);
    let mut report = LoadReport::default();
    for load in loads {
        let r = load.await?;
        report.acked.extend(r.acked);
        report.refused.extend(r.refused);
        if let Some(e) = r.error {
            report.error = Some(e);
        }
    }
    let samples = samples.await?;
    let _ = proxy.shutdown(Duration::from_secs(5)).await;

    // Throughput per sample interval, tagged with whether it falls near an edit.
    let mut quiet = Vec::new();
    let mut edits = Vec::new();
    let rates: Vec<(Instant, f64)> = samples
        .windows(2)
        .map(|w| {
            let secs = w[1].0.duration_since(w[0].0).as_secs_f64();
            (w[1].0, (w[1].1 - w[0].1) as f64 / secs.max(1e-9))
        })
        .collect();
    for &(at, rate) in &rates {
        let near = writes
            .iter()
            .any(|w| at + SAMPLE >= *w && at <= *w + Duration::from_millis(1500));
        if !near {
            quiet.push(rate);
        }
    }
    for (w, (change, applied, served)) in writes.iter().zip(timings) {
        let lowest_rate = rates
            .iter()
            .filter(|(at, _)| *at > *w && *at <= *w + Duration::from_secs(1) + SAMPLE)
            .map(|(_, r)| *r)
            .fold(f64::INFINITY, f64::min);
        edits.push(Edit {
            change,
            applied,
            served,
            lowest_rate,
        });
    }
    Ok(ReloadReport {
        edits,
        baseline_rate: median(&mut quiet),
        acked: report.acked.len(),
        refused: report.refused.len(),
        errors: report.error.into_iter().collect(),
    })
}

/// Reads the acknowledgement counter every [`SAMPLE`] until `stop`.
fn sample(
    counter: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Instant, u64)>> {
    tokio::spawn(async move {
        let mut out = vec![(Instant::now(), counter.load(Ordering::Relaxed))];
        let mut tick = tokio::time::interval(SAMPLE);
        tick.tick().await;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            out.push((Instant::now(), counter.load(Ordering::Relaxed)));
        }
        out
    })
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

impl ReloadReport {
    /// The report as Markdown.
    pub fn markdown(&self, args: &ReloadArgs) -> String {
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        let pct = |r: f64| {
            if self.baseline_rate > 0.0 {
                format!("{:.0} %", 100.0 * r / self.baseline_rate)
            } else {
                "-".into()
            }
        };
        let mut out = format!(
            "reload: {} MQTT 5 connections, QoS 1, {} in flight each; {} edits {} ms apart; Kafka: {}\n\n\
             | edit | change | write → applied | write → served | lowest 100 ms throughput in the next second |\n\
             |---|---|---|---|---|\n",
            args.clients,
            args.window,
            args.edits,
            args.interval_ms,
            args.kafka
                .as_deref()
                .unwrap_or("embedded (in the proxy's process)"),
        );
        for (i, e) in self.edits.iter().enumerate() {
            out += &format!(
                "| {} | {} | {} | {} | {:.0} msg/s ({}) |\n",
                i + 1,
                e.change,
                ms(e.applied),
                ms(e.served),
                e.lowest_rate,
                pct(e.lowest_rate)
            );
        }
        let mut applied: Vec<f64> = self.edits.iter().map(|e| e.applied.as_secs_f64()).collect();
        let mut served: Vec<f64> = self.edits.iter().map(|e| e.served.as_secs_f64()).collect();
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let lowest = self
            .edits
            .iter()
            .map(|e| e.lowest_rate)
            .fold(f64::INFINITY, f64::min);
        out += &format!(
            "\nbaseline {:.0} msg/s; write → applied median {:.0} ms, max {:.0} ms; write → served median {:.0} ms, max {:.0} ms; \
             lowest 100 ms window during a swap {:.0} msg/s ({}); {} acknowledged, {} refused, {} connection errors\n",
            self.baseline_rate,
            median(&mut applied) * 1000.0,
            max(&applied) * 1000.0,
            median(&mut served) * 1000.0,
            max(&served) * 1000.0,
            lowest,
            pct(lowest),
            self.acked,
            self.refused,
            self.errors.len()
        );
        out
    }
}
