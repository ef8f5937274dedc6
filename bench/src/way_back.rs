//! The way back: the same messages fanned out to N MQTT subscribers, by two paths.
//!
//! - (g) records produced into Kafka (tansu, its own process), read by the proxy's source route
//!   and published to the N subscribers, each acknowledging at QoS 1; the proxy commits a record
//!   only once all N have it;
//! - (h) the same messages published over MQTT QoS 1 to mosquitto, which delivers them to the same
//!   N subscribers.
//!
//! Every subscriber counts what it received; a message one of them never got is lost, one it got
//! twice duplicated. Latency runs from the producer's send (Kafka produce, MQTT publish) to the
//! subscriber's receipt; rates count deliveries (messages × subscribers) per second, from the
//! first send to the last receipt. CPU is the proxy's or mosquitto's own, per million deliveries.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use crate::load::{Load, MqttVersion, now_micros, parse_payload, payload};
use crate::peers::{self, Tansu, free_low_port, usage};

/// The scenario's knobs.
#[derive(Debug, Clone, clap::Args)]
pub struct WayBackArgs {
    /// Messages produced; each goes to every subscriber.
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    /// MQTT subscribers, each subscribed to every message.
    #[arg(long, default_value_t = 4)]
    pub subscribers: usize,
    /// Payload size in bytes (at least the ~70 bytes of id and timestamp).
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// The proxy binary (`cargo build --release -p barnabas`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/barnabas"))]
    pub binary: PathBuf,
}

/// One path's numbers.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    /// Messages × subscribers received.
    pub deliveries: u64,
    /// Deliveries per second.
    pub rate: f64,
    /// p50, p99, p999 from send to receipt, in milliseconds.
    pub latency_ms: [f64; 3],
    /// CPU seconds of the proxy or mosquitto per million deliveries.
    pub cpu_per_million: f64,
    /// Its peak resident set, in MiB.
    pub peak_rss_mib: f64,
    /// (message, subscriber) pairs never received.
    pub lost: u64,
    /// Receipts beyond the first of a message by one subscriber.
    pub duplicated: u64,
}

/// Both rows.
#[derive(Debug, Clone)]
pub struct Report {
    pub rows: Vec<Row>,
}

/// What one subscriber saw, and when its last new message came.
struct Seen {
    ids: HashSet<String>,
    latencies_us: Vec<u64>,
    duplicated: u64,
    last: Instant,
}

/// Connects `n` MQTT 5 subscribers to `back/#` at QoS 1 and returns once every one has its
/// SUBACK; each task collects until it has `want` messages or nothing new came for 5 s after
/// `done`.
async fn subscribers(
    port: u16,
    n: usize,
    want: u64,
    done: Arc<AtomicBool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<Seen>>> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut opts = MqttOptions::new(format!("bench-sub-{i}"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(opts, 1024);
        client.subscribe("back/#", QoS::AtLeastOnce).await?;
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await? {
                break;
            }
        }
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let _client = client;
            let mut seen = Seen {
                ids: HashSet::new(),
                latencies_us: Vec::new(),
                duplicated: 0,
                last: Instant::now(),
            };
            while (seen.ids.len() as u64) < want {
                match tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        if let Some((id, ts)) = parse_payload(&p.payload) {
                            seen.latencies_us.push(now_micros().saturating_sub(ts));
                            if seen.ids.insert(id) {
                                seen.last = Instant::now();
                            } else {
                                seen.duplicated += 1;
                            }
                        }
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        if done.load(Ordering::Relaxed)
                            && seen.last.elapsed() > Duration::from_secs(5)
                        {
                            break;
                        }
                    }
                }
            }
            seen
        }));
    }
    Ok(tasks)
}

fn row(
    name: String,
    args: &WayBackArgs,
    started: Instant,
    seen: Vec<Seen>,
    cpu: (f64, f64, u64),
) -> Row {
    let deliveries: u64 = seen.iter().map(|s| s.ids.len() as u64).sum();
    let last = seen.iter().map(|s| s.last).max().unwrap_or(started);
    let lost = (args.messages * args.subscribers as u64).saturating_sub(deliveries);
    let duplicated = seen.iter().map(|s| s.duplicated).sum();
    let mut latencies: Vec<u64> = seen.into_iter().flat_map(|s| s.latencies_us).collect();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |v| *v as f64 / 1000.0)
    };
    let (before, after, rss) = cpu;
    Row {
        name,
        deliveries,
        rate: deliveries as f64 / last.duration_since(started).as_secs_f64().max(1e-9),
        latency_ms: [at(0.5), at(0.99), at(0.999)],
        cpu_per_million: (after - before) / deliveries.max(1) as f64 * 1e6,
        peak_rss_mib: rss as f64 / 1024.0,
        lost,
        duplicated,
    }
}

/// (g) Kafka → the proxy's source route → the subscribers.
async fn through_proxy(args: &WayBackArgs, tansu: &Tansu) -> anyhow::Result<Row> {
    let topic = "bench.back";
    tansu.try_create_topic(topic, 1)?;
    let dir = tempfile::tempdir()?;
    let port = free_low_port();
    let yaml = format!(
        "listeners:\n  mqtt: {{ bind: \"127.0.0.1:{port}\", receive_maximum: 1000 }}\n\
         destinations:\n  kafka: {{ kind: kafka, bootstrap: \"{}\", options: {{ auto.offset.reset: earliest }} }}\n\
         routes:\n  - name: back\n    from: \"kafka:{topic}\"\n    to: \"mqtt:back/{{key}}\"\n    qos: 1\n    ttl_ms: 120000\n    undelivered: drop\n",
        tansu.bootstrap
    );
    let config = dir.path().join("routes.yaml");
    std::fs::write(&config, yaml)?;
    let proxy = peers::barnabas(&args.binary, &config, &format!("127.0.0.1:{port}"))?;
    let done = Arc::new(AtomicBool::new(false));
    let subs = subscribers(port, args.subscribers, args.messages, done.clone()).await?;
    let (cpu_before, _) = usage(proxy.pid())?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &tansu.bootstrap)
        .set("linger.ms", "1")
        .create()?;
    let pad = "x".repeat(args.payload.saturating_sub(80));
    let started = Instant::now();
    let mut acks = Vec::with_capacity(args.messages as usize);
    for i in 0..args.messages {
        let body = payload("back", i, &pad);
        let key = format!("k{}", i % 16);
        let record = FutureRecord::to(topic).key(&key).payload(&body);
        match producer.send_result(record) {
            Ok(ack) => acks.push(ack),
            Err((e, _)) => bail!("produce: {e}"),
        }
        if acks.len() >= 10_000 {
            for ack in acks.drain(..) {
                let _ = ack.await;
            }
        }
    }
    for ack in acks {
        let _ = ack.await;
    }
    done.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for s in subs {
        seen.push(s.await?);
    }
    let (cpu_after, rss) = usage(proxy.pid())?;
    Ok(row(
        format!(
            "(g) Kafka → proxy → {} MQTT 5 QoS 1 subscribers",
            args.subscribers
        ),
        args,
        started,
        seen,
        (cpu_before, cpu_after, rss),
    ))
}

/// (h) MQTT QoS 1 → mosquitto → the subscribers.
async fn through_mosquitto(args: &WayBackArgs) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir()?;
    let (broker, port) = peers::mosquitto(dir.path())?;
    let done = Arc::new(AtomicBool::new(false));
    let subs = subscribers(port, args.subscribers, args.messages, done.clone()).await?;
    let (cpu_before, _) = usage(broker.pid())?;
    let started = Instant::now();
    let report = Load {
        addr: ([127, 0, 0, 1], port).into(),
        client_id: "back".into(),
        topic: "back/k".into(),
        window: 64,
        stop: Arc::new(AtomicBool::new(false)),
        acked_counter: Arc::new(AtomicU64::new(0)),
        count: Some(args.messages),
        pad: args.payload.saturating_sub(80),
        version: MqttVersion::V5,
        qos: 1,
        rate: None,
        tls: None,
    }
    .run()
    .await;
    if let Some(e) = report.error {
        bail!("the publisher failed: {e}");
    }
    done.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for s in subs {
        seen.push(s.await?);
    }
    let (cpu_after, rss) = usage(broker.pid())?;
    Ok(row(
        format!(
            "(h) MQTT 5 QoS 1 → mosquitto 2.0 → {} MQTT 5 QoS 1 subscribers",
            args.subscribers
        ),
        args,
        started,
        seen,
        (cpu_before, cpu_after, rss),
    ))
}

/// Runs (g) then (h).
pub async fn run(args: &WayBackArgs) -> anyhow::Result<Report> {
    if !args.binary.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p barnabas`",
            args.binary.display()
        );
    }
    let tansu = Tansu::try_start().context("starting tansu")?;
    let g = through_proxy(args, &tansu).await?;
    let h = through_mosquitto(args).await?;
    Ok(Report { rows: vec![g, h] })
}

impl Report {
    /// The rows as a Markdown table.
    pub fn markdown(&self, args: &WayBackArgs) -> String {
        let mut out = format!(
            "{} messages of {} bytes, each to {} subscribers\n\n\
             | path | deliveries/s | p50 ms | p99 ms | p99.9 ms | CPU s per 1M deliveries | peak RSS MiB | lost | duplicated |\n\
             |---|---|---|---|---|---|---|---|---|\n",
            args.messages, args.payload, args.subscribers
        );
        for r in &self.rows {
            out += &format!(
                "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.2} | {:.0} | {} | {} |\n",
                r.name,
                r.rate,
                r.latency_ms[0],
                r.latency_ms[1],
                r.latency_ms[2],
                r.cpu_per_million,
                r.peak_rss_mib,
                r.lost,
                r.duplicated
            );
        }
        out
    }
}
