//! The throughput benchmark: the same messages through several paths, back to back, against the
//! same Kafka-API broker (tansu, its own process):
//!
//! - (a) produced straight into Kafka with rdkafka, `acks=all`: the egress ceiling;
//! - (b) MQTT QoS 1 → the proxy (passthrough plugin) → Kafka;
//! - (c) the same through the `enrich` + `threshold` chain;
//! - (d) MQTT QoS 1 → mosquitto, read back by a subscriber: the ingest-only reference;
//! - (e) AMQP 1.0 → the proxy (passthrough) → Kafka;
//! - (f) (b) over TLS; (r) (b) while every message is recorded; (s) (b) with a shadow plugin;
//! - (i) MQTT QoS 1 → mosquitto with no subscriber: what taking the messages in costs alone.
//!
//! Each message carries its id and send time; a consumer (a Kafka reader, or the mosquitto
//! subscriber) measures end-to-end latency and counts lost and duplicated messages. The proxy and
//! mosquitto run as their own processes, so their CPU time and peak memory are theirs alone.
//!
//! Then (a) and (b) run again at half of (b)'s measured rate, on an open schedule, and the
//! difference of their p99 latencies is the latency the proxy adds when it is not saturated.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};

use crate::load::{Load, MqttVersion, now_micros, pace, parse_payload, payload, stop_after};
use crate::peers::{self, Tansu, free_low_port, usage};

/// The scenario's knobs.
#[derive(Debug, Clone, clap::Args)]
pub struct ThroughputArgs {
    /// Messages per scenario.
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// Concurrent connections (MQTT or AMQP) per scenario.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 32)]
    pub window: u16,
    /// Payload size in bytes (at least the ~70 bytes of id and timestamp).
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// The proxy binary (`cargo build --release -p barnabas`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/barnabas"))]
    pub binary: PathBuf,
    /// Where the built plugins are (`make plugins`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/dist"))]
    pub plugins: PathBuf,
    /// Run only these scenarios (letters a to f, r for (b) while recording every message, s for
    /// (b) with a shadow copy of its plugin, i for mosquitto taking the messages in with no
    /// subscriber); a to f when empty.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<char>,
    /// The MQTT version of the load: 5 or 3.1.1.
    #[arg(long, value_enum, default_value_t = MqttVersion::V5)]
    pub mqtt_version: MqttVersion,
    /// The QoS of the MQTT load: 0, 1 or 2.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Messages per second in total, spread over the connections; flat out when unset.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Run each scenario for this many seconds instead of `--messages`.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Open the MQTT connections spread evenly over this many seconds instead of all at once,
    /// so that many connections on a rate publish spread over each second; `--duration` counts
    /// from the end of it.
    #[arg(long)]
    pub ramp: Option<f64>,
    /// Skip the runs of (a) and (b) at half of (b)'s rate that measure the latency added.
    #[arg(long)]
    pub no_latency: bool,
    /// Plugins in (b)'s chain: this many copies of `passthrough`, one after the other (0 for a
    /// route without plugins), at most 8.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=8))]
    pub chain: u64,
    /// Routes in the proxy's routes.yaml: the benchmark's own route comes last, after this many
    /// less one per-tenant routes with wildcard filters that the load's topics never match.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub routes: u64,
    /// librdkafka's `linger.ms` for the proxy's producer and the direct one of (a).
    #[arg(long, default_value_t = 1)]
    pub linger_ms: u32,
    /// The proxy's worker threads (`barnabas run --workers N`); its default when absent.
    #[arg(long)]
    pub proxy_workers: Option<u16>,
}

impl ThroughputArgs {
    /// How long to run, when running by time.
    pub(crate) fn duration(&self) -> Option<Duration> {
        self.duration.map(Duration::from_secs_f64)
    }

    /// The time over which the connections open.
    fn ramp(&self) -> Duration {
        Duration::from_secs_f64(self.ramp.unwrap_or(0.0).max(0.0))
    }

    /// The messages a consumer waits for: all of them, or (by time) until told how many.
    fn expected(&self) -> Arc<AtomicU64> {
        Arc::new(AtomicU64::new(if self.duration.is_some() {
            u64::MAX
        } else {
            self.messages
        }))
    }

    /// The rate of one of `self.connections` connections.
    pub(crate) fn rate_per_connection(&self) -> Option<f64> {
        self.rate.map(|r| r / self.connections as f64)
    }
}

/// One scenario's numbers.
#[derive(Debug, Clone)]
pub struct Row {
    /// The scenario's letter and name.
    pub name: String,
    /// Messages acknowledged.
    pub acked: u64,
    /// Acknowledged messages per second, from the first send to the last acknowledgement.
    pub rate: f64,
    /// End-to-end latency percentiles (p50, p99, p999), in milliseconds.
    pub latency_ms: [f64; 3],
    /// The same for messages sent after the ramp (`--ramp`) ended, when there was one.
    pub after_ramp_ms: Option<[f64; 3]>,
    /// CPU seconds per million messages of the broker or proxy process, where there is one.
    pub cpu_per_million: Option<f64>,
    /// Its peak resident set, in MiB.
    pub peak_rss_mib: Option<f64>,
    /// Acknowledged messages the consumer never saw.
    pub lost: u64,
    /// Messages the consumer saw more than once.
    pub duplicated: u64,
    /// Whether a consumer read the messages back. Without one (the ingest-only row), latency,
    /// lost and duplicated are not measured and show as `-`.
    pub read_back: bool,
}

impl Row {
    /// The row as a line of a Markdown table: its name, then `count` (a rate or a number of
    /// messages), latency, CPU, memory, lost and duplicated.
    pub(crate) fn markdown(&self, count: String) -> String {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        // Measured only where a consumer read the messages back.
        let measured = |text: String| if self.read_back { text } else { "-".into() };
        format!(
            "| {} | {count} | {} | {} | {} | {} | {} | {} | {} |\n",
            self.name,
            measured(format!("{:.2}", self.latency_ms[0])),
            measured(format!("{:.2}", self.latency_ms[1])),
            measured(format!("{:.2}", self.latency_ms[2])),
            opt(self.cpu_per_million),
            opt(self.peak_rss_mib),
            measured(self.lost.to_string()),
            measured(self.duplicated.to_string())
        )
    }
}

/// The five rows and the ratios between them.
#[derive(Debug, Clone)]
pub struct Report {
    /// In the order run.
    pub rows: Vec<Row>,
    /// (a) and (b) again at half of (b)'s rate: the rate and the two rows.
    pub half_rate: Option<(f64, Row, Row)>,
    /// New TLS connections per second the proxy took after (f)'s load.
    pub tls_connects: Option<f64>,
}

/// What a consumer saw.
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    /// Each message's send time (µs since the epoch) and its latency (µs).
    latencies_us: Vec<(u64, u64)>,
    duplicated: u64,
}

impl Seen {
    fn record(&mut self, bytes: &[u8]) {
        if let Some((id, ts)) = parse_payload(bytes) {
            self.latencies_us
                .push((ts, now_micros().saturating_sub(ts)));
            if !self.ids.insert(id) {
                self.duplicated += 1;
            }
        }
    }
}

/// Reads `topic` from the beginning until `want` distinct messages arrived, or until `done` is set
/// and nothing new came for five seconds. Returns once the reader has fetched from every
/// partition, so that its start-up does not count as the first messages' latency.
fn consume_kafka(
    bootstrap: String,
    topic: String,
    want: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<Seen>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "barnabas-bench")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()?;
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let partitions = md
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        if partitions == 0 {
            bail!("topic {topic} has no partitions");
        }
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p as i32, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let mut seen = Seen::default();
        // The first polls connect and fetch: nothing has been produced yet.
        for _ in 0..5 {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                seen.record(m.payload().unwrap_or_default());
            }
        }
        let _ = ready_tx.send(());
        let mut last_new = Instant::now();
        while (seen.ids.len() as u64) < want.load(Ordering::Relaxed) {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    seen.record(m.payload().unwrap_or_default());
                    last_new = Instant::now();
                }
                Some(Err(_)) | None => {
                    if done.load(Ordering::Relaxed) && last_new.elapsed() > Duration::from_secs(5) {
                        break;
                    }
                }
            }
        }
        Ok(seen)
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(30));
    reader
}

fn percentiles(mut v: Vec<u64>) -> [f64; 3] {
    if v.is_empty() {
        return [0.0; 3];
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64 / 1000.0;
    [at(0.5), at(0.99), at(0.999)]
}

/// Runs the MQTT load generator against `addr` and returns the acknowledged ids and the time
/// from the first send to the last acknowledgement.
async fn mqtt_load(
    args: &ThroughputArgs,
    addr: std::net::SocketAddr,
    prefix: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<(Vec<String>, Duration)> {
    let per = args.messages.div_ceil(args.connections as u64);
    let ramp = args.ramp();
    let stop = stop_after(args.duration().map(|d| ramp + d));
    let counter = Arc::new(AtomicU64::new(0));
    let pad = args.payload.saturating_sub(80);
    let started = Instant::now();
    let loads: Vec<_> = (0..args.connections)
        .map(|i| {
            let delay = ramp.mul_f64(i as f64 / args.connections as f64);
            let load = Load {
                addr,
                client_id: format!("{prefix}{i}"),
                topic: format!("bench/{prefix}{i}"),
                window: args.window,
                stop: stop.clone(),
                acked_counter: counter.clone(),
                count: args.duration.is_none().then_some(per),
                pad,
                version: args.mqtt_version,
                qos: args.qos,
                rate: args.rate_per_connection(),
                tls: tls.clone(),
            };
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                load.run().await
            })
        })
        .collect();
    let mut acked = Vec::new();
    for l in loads {
        let r = l.await?;
        if let Some(e) = r.error {
            bail!("an MQTT connection failed: {e}");
        }
        if !r.refused.is_empty() {
            bail!(
                "{} messages refused, e.g. {:?}",
                r.refused.len(),
                r.refused[0]
            );
        }
        acked.extend(
            r.acked
                .iter()
                .filter_map(|p| parse_payload(p.as_bytes()).map(|(id, _)| id)),
        );
    }
    Ok((acked, started.elapsed()))
}

/// A scenario's row. `ramp` is the load's ramp: latency is also given for the messages sent
/// after it, counted from the first message sent.
fn row(
    name: &str,
    acked: Vec<String>,
    took: Duration,
    seen: Seen,
    usage: Option<(f64, f64, u64)>,
    ramp: Duration,
) -> Row {
    let lost = acked.iter().filter(|id| !seen.ids.contains(*id)).count() as u64;
    let n = acked.len() as u64;
    let after_ramp_ms = (!ramp.is_zero()).then(|| {
        let first = seen.latencies_us.iter().map(|(sent, _)| *sent).min();
        let end = first.unwrap_or(0) + ramp.as_micros() as u64;
        percentiles(
            seen.latencies_us
                .iter()
                .filter(|(sent, _)| *sent >= end)
                .map(|(_, latency)| *latency)
                .collect(),
        )
    });
    Row {
        name: name.to_string(),
        acked: n,
        rate: n as f64 / took.as_secs_f64().max(1e-9),
        latency_ms: percentiles(seen.latencies_us.into_iter().map(|(_, l)| l).collect()),
        after_ramp_ms,
        cpu_per_million: usage.map(|(before, after, _)| (after - before) / (n.max(1) as f64) * 1e6),
        peak_rss_mib: usage.map(|(_, _, kib)| kib as f64 / 1024.0),
        lost,
        duplicated: seen.duplicated,
        read_back: true,
    }
}

/// (a) Straight into Kafka, to `topic`.
async fn direct(
    args: &ThroughputArgs,
    tansu: &Tansu,
    topic: &str,
    name: &str,
) -> anyhow::Result<Row> {
    tansu.try_create_topic(topic, 3)?;
    let done = Arc::new(AtomicBool::new(false));
    let want = args.expected();
    let reader = consume_kafka(
        tansu.bootstrap.clone(),
        topic.into(),
        want.clone(),
        done.clone(),
    );
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &tansu.bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", args.linger_ms.to_string())
        .set(
            "message.max.bytes",
            (2 * args.payload + 65_536).max(1_000_000).to_string(),
        )
        .create()?;
    // Connected and knowing the topic's leaders before the clock starts, as the proxy's producer
    // is by the time its first client connects: else the first records wait for both.
    let (warm, warm_topic) = (producer.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        warm.client()
            .fetch_metadata(Some(&warm_topic), Duration::from_secs(10))
    })
    .await??;
    let pad = "x".repeat(args.payload.saturating_sub(80));
    let window = args.connections * usize::from(args.window);
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut acked = Vec::new();
    let until = args.duration().map(|d| started + d);
    for seq in 0.. {
        let more = match until {
            Some(until) => Instant::now() < until,
            None => seq < args.messages,
        };
        if !more {
            break;
        }
        pace(started.into(), seq, args.rate).await;
        if in_flight.len() >= window
            && let Some(r) = in_flight.next().await
        {
            acked.extend(r);
        }
        // Handed to librdkafka now, at its turn on the schedule: a `send` future would only
        // enqueue the record when first polled, which the window may not do for a long time.
        let body = payload("direct", seq, &pad);
        let mut record = FutureRecord::<(), _>::to(topic).payload(&body);
        let delivery = loop {
            match producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    match in_flight.next().await {
                        Some(r) => acked.extend(r),
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                Err((e, _)) => bail!("producing to {topic}: {e}"),
            }
        };
        in_flight.push(async move {
            matches!(delivery.await, Ok(Ok(_))).then(|| format!("direct-{seq}"))
        });
    }
    while let Some(r) = in_flight.next().await {
        acked.extend(r);
    }
    let took = started.elapsed();
    want.store(acked.len() as u64, Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    let seen = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    Ok(row(name, acked, took, seen, None, args.ramp()))
}

/// How a scenario's clients reach the proxy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Mqtt,
    /// MQTT, while `barnabas record` takes every message of the route (with its outputs).
    MqttRecording,
    /// MQTT, with a shadow copy of the route's plugin run beside it on every message.
    MqttShadow,
    /// MQTT over TLS; the new-connection rate is measured too.
    MqttTls,
    Amqp,
}

/// (b), (c), (e) and (f): the proxy as its own process in front of tansu. For (f) the row's
/// second value is the new TLS connections per second the listener took after the load.
async fn through_proxy(
    args: &ThroughputArgs,
    tansu: &Tansu,
    tag: &str,
    name: &str,
    plugins: &[&str],
    via: Via,
) -> anyhow::Result<(Row, Option<f64>)> {
    let amqp = via == Via::Amqp;
    let topic = format!("bench.{tag}");
    tansu.try_create_topic(&topic, 3)?;
    let dir = tempfile::tempdir()?;
    let mqtt_port = free_low_port();
    let amqp_port = free_low_port();
    let mut plugin_yaml = String::new();
    for p in plugins {
        let config = match *p {
            "enrich" => "{ site: plant-7 }",
            "threshold" => "{ field: temperature, min: -40, alert_above: 80 }",
            _ => "null",
        };
        // `passthrough-2` and on are further copies of `passthrough`, for longer chains.
        let file = if p.starts_with("passthrough") {
            "passthrough"
        } else {
            p
        };
        plugin_yaml += &format!(
            "  {p}: {{ wasm: \"{}\", config: {config} }}\n",
            args.plugins.join(format!("{file}.wasm")).display()
        );
    }
    // A chain of none needs an empty mapping, not an empty section.
    if plugin_yaml.is_empty() {
        plugin_yaml = "  {}\n".into();
    }
    // Routes before the benchmark's own, none of which its topics match (`--routes`).
    let mut filler = String::new();
    for i in 0..args.routes - 1 {
        let from = match i % 4 {
            0 => format!("+/tenant-{i}/status"),
            1 => format!("tenant-{i}/+/data"),
            2 => format!("tenant-{i}/events/#"),
            _ => format!("tenant-{i}/commands/reset"),
        };
        filler += &format!(
            "  - {{ name: r{i}, from: \"{}:{from}\", to: \"kafka:bench.filler\" }}\n",
            if amqp { "amqp" } else { "mqtt" }
        );
    }
    // Large payloads (`--payload`) need a larger packet limit on the listener and producer.
    let large = args.payload > 512 * 1024;
    let packet_limit = if large {
        format!(", max_packet_size: {}", 2 * args.payload + 65_536)
    } else {
        String::new()
    };
    let message_limit = if large {
        format!(", message.max.bytes: {}", 2 * args.payload + 65_536)
    } else {
        String::new()
    };
    let mut route_extra = String::new();
    if via == Via::MqttShadow {
        plugin_yaml += &format!(
            "  shadow-copy: {{ wasm: \"{}\" }}\n",
            args.plugins.join("passthrough.wasm").display()
        );
        route_extra = "    shadow: { passthrough: shadow-copy }\n".into();
    }
    let admin_port = free_low_port();
    let from = if amqp { "amqp:bench/#" } else { "mqtt:bench/#" };
    // (f): a CA and a server certificate for 127.0.0.1, made for the run.
    let pki = crate::pki::Pki::new(&dir.path().join("certs"), "bench CA")?;
    let server = pki.server("server", crate::pki::Validity::default())?;
    let tls_yaml = match via {
        Via::MqttTls => format!(
            ", tls: {{ cert: \"{}\", key: \"{}\" }}",
            server.cert.display(),
            server.key.display()
        ),
        _ => String::new(),
    };
    let yaml = format!(
        "listeners:\n  mqtt: {{ bind: \"127.0.0.1:{mqtt_port}\"{tls_yaml}{packet_limit} }}\n  amqp: {{ bind: \"127.0.0.1:{amqp_port}\", credit: {} }}\n\
         admin: {{ bind: \"127.0.0.1:{admin_port}\" }}\n\
         destinations:\n  kafka: {{ kind: kafka, bootstrap: \"{}\", options: {{ linger.ms: {}{message_limit} }} }}\n\
         plugins:\n{plugin_yaml}\
         routes:\n{filler}  - name: bench\n    from: \"{from}\"\n    plugins: [{}]\n{route_extra}    to: \"kafka:{topic}\"\n",
        args.window,
        tansu.bootstrap,
        args.linger_ms,
        plugins.join(", ")
    );
    let config = dir.path().join("routes.yaml");
    std::fs::write(&config, yaml)?;
    let listen = if amqp { amqp_port } else { mqtt_port };
    let workers = args.proxy_workers.map(|n| n.to_string());
    let run_args: Vec<&str> = match &workers {
        Some(n) => vec!["--workers", n],
        None => Vec::new(),
    };
    let proxy = peers::barnabas_with(
        &args.binary,
        &config,
        &format!("127.0.0.1:{listen}"),
        &run_args,
    )?;
    // (r): a recording of every message, read as fast as it comes; started before the load.
    let recording = if via == Via::MqttRecording {
        let url =
            format!("http://127.0.0.1:{admin_port}/record?route=bench&count=1000000&outputs=true");
        let mut response = reqwest::get(&url).await?.error_for_status()?;
        Some(tokio::spawn(async move {
            let mut lines = 0u64;
            while let Ok(Some(chunk)) = response.chunk().await {
                lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
            }
            lines
        }))
    } else {
        None
    };
    let (cpu_before, _) = usage(proxy.pid())?;

    let done = Arc::new(AtomicBool::new(false));
    let want = args.expected();
    let reader = consume_kafka(
        tansu.bootstrap.clone(),
        topic.clone(),
        want.clone(),
        done.clone(),
    );
    let (acked, took) = if amqp {
        crate::amqp_load::run(
            args,
            ([127, 0, 0, 1], amqp_port).into(),
            &format!("amqp{tag}"),
        )
        .await?
    } else {
        let tls = match via {
            Via::MqttTls => Some(crate::load::tls_client(&pki.ca())?),
            _ => None,
        };
        mqtt_load(
            args,
            ([127, 0, 0, 1], mqtt_port).into(),
            &format!("mqtt{tag}"),
            tls,
        )
        .await?
    };
    let (cpu_after, rss) = usage(proxy.pid())?;
    let connects = match via {
        Via::MqttTls => Some(
            crate::load::tls_connect_rate(
                ([127, 0, 0, 1], mqtt_port).into(),
                crate::load::tls_client(&pki.ca())?,
                4,
                Duration::from_secs(5),
            )
            .await?,
        ),
        _ => None,
    };
    want.store(acked.len() as u64, Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    let seen = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    if let Some(recording) = recording {
        // Stopping the proxy ends the recording's stream.
        drop(proxy);
        let lines = recording.await?;
        eprintln!("(r) recorded {lines} lines of {} messages", acked.len());
    }
    Ok((
        row(
            name,
            acked,
            took,
            seen,
            Some((cpu_before, cpu_after, rss)),
            args.ramp(),
        ),
        connects,
    ))
}

/// (i) The same load into mosquitto with nobody subscribed: the broker only takes the messages
/// in and acknowledges them, the least any MQTT server can do with them.
async fn mosquitto_ingest_only(args: &ThroughputArgs) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir()?;
    let (broker, port) = peers::mosquitto(dir.path())?;
    let (cpu_before, _) = usage(broker.pid())?;
    let (acked, took) = mqtt_load(args, ([127, 0, 0, 1], port).into(), "ingest", None).await?;
    let (cpu_after, rss) = usage(broker.pid())?;
    let name = format!(
        "(i) {} → mosquitto 2.0, ingest only (no subscriber)",
        mqtt_label(args)
    );
    let mut r = row(
        &name,
        acked,
        took,
        Seen::default(),
        Some((cpu_before, cpu_after, rss)),
        args.ramp(),
    );
    r.lost = 0;
    r.read_back = false;
    Ok(r)
}

/// (d) mosquitto, read back by a QoS 1 subscriber.
async fn mosquitto(args: &ThroughputArgs) -> anyhow::Result<Row> {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let dir = tempfile::tempdir()?;
    let (broker, port) = peers::mosquitto(dir.path())?;
    let (cpu_before, _) = usage(broker.pid())?;
    let mut opts = MqttOptions::new("bench-subscriber", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    client.subscribe("bench/#", QoS::AtLeastOnce).await?;
    // Wait for the SUBACK before publishing.
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await? {
            break;
        }
    }
    let want = args.expected();
    let done = Arc::new(AtomicBool::new(false));
    let subscriber = {
        let (done, want) = (done.clone(), want.clone());
        tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut last_new = Instant::now();
            while (seen.ids.len() as u64) < want.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        seen.record(&p.payload);
                        last_new = Instant::now();
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        if done.load(Ordering::Relaxed)
                            && last_new.elapsed() > Duration::from_secs(5)
                        {
                            break;
                        }
                    }
                }
            }
            seen
        })
    };
    let (acked, took) = mqtt_load(args, ([127, 0, 0, 1], port).into(), "mosq", None).await?;
    let (cpu_after, rss) = usage(broker.pid())?;
    want.store(acked.len() as u64, Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    let seen = subscriber.await?;
    Ok(row(
        &format!("(d) {} → mosquitto 2.0 → subscriber", mqtt_label(args)),
        acked,
        took,
        seen,
        Some((cpu_before, cpu_after, rss)),
        args.ramp(),
    ))
}

/// Runs the chosen scenarios back to back.
pub async fn run(args: &ThroughputArgs) -> anyhow::Result<Report> {
    if !args.binary.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p barnabas`",
            args.binary.display()
        );
    }
    let tansu = Tansu::try_start().context("starting tansu")?;
    let wanted = |c: char| (args.only.is_empty() && c <= 'f') || args.only.contains(&c);
    let mqtt = mqtt_label(args);
    let mut rows = Vec::new();
    if wanted('a') {
        rows.push(
            direct(
                args,
                &tansu,
                "bench.a",
                "(a) Kafka produce, rdkafka acks=all",
            )
            .await?,
        );
    }
    if wanted('b') {
        let chain = chain(args.chain);
        let plugins = match args.chain {
            0 => "no plugin".to_string(),
            1 => "passthrough".to_string(),
            n => format!("{n} × passthrough"),
        };
        let name = format!("(b) {mqtt} → proxy ({plugins}) → Kafka");
        rows.push(
            through_proxy(args, &tansu, "b", &name, &chain, Via::Mqtt)
                .await?
                .0,
        );
    }
    if wanted('c') {
        let name = format!("(c) {mqtt} → proxy (enrich + threshold) → Kafka");
        rows.push(
            through_proxy(
                args,
                &tansu,
                "c",
                &name,
                &["enrich", "threshold"],
                Via::Mqtt,
            )
            .await?
            .0,
        );
    }
    if wanted('d') {
        rows.push(mosquitto(args).await?);
    }
    if wanted('i') {
        rows.push(mosquitto_ingest_only(args).await?);
    }
    if wanted('e') {
        let name = "(e) AMQP → proxy (passthrough) → Kafka";
        rows.push(
            through_proxy(args, &tansu, "e", name, &["passthrough"], Via::Amqp)
                .await?
                .0,
        );
    }
    let mut tls_connects = None;
    if wanted('f') {
        let name = format!("(f) {mqtt} over TLS → proxy (passthrough) → Kafka");
        let (row, connects) =
            through_proxy(args, &tansu, "f", &name, &["passthrough"], Via::MqttTls).await?;
        rows.push(row);
        tls_connects = connects;
    }
    if wanted('r') {
        let name = format!("(r) {mqtt} → proxy (passthrough, every message recorded) → Kafka");
        rows.push(
            through_proxy(
                args,
                &tansu,
                "r",
                &name,
                &["passthrough"],
                Via::MqttRecording,
            )
            .await?
            .0,
        );
    }
    if wanted('s') {
        let name = format!("(s) {mqtt} → proxy (passthrough, shadowed by a copy) → Kafka");
        rows.push(
            through_proxy(args, &tansu, "s", &name, &["passthrough"], Via::MqttShadow)
                .await?
                .0,
        );
    }
    let mut report = Report {
        rows,
        half_rate: None,
        tls_connects,
    };
    if let (Some(max), false) = (report.rate('b'), args.no_latency)
        && wanted('a')
        && max > 0.0
    {
        // The same messages, on a schedule at half of what the proxy sustained.
        let half = ThroughputArgs {
            rate: Some(max / 2.0),
            ..args.clone()
        };
        let a = direct(&half, &tansu, "bench.a-half", "(a) at half rate").await?;
        let (b, _) = through_proxy(
            &half,
            &tansu,
            "b-half",
            "(b) at half rate",
            &["passthrough"],
            Via::Mqtt,
        )
        .await?;
        report.half_rate = Some((max / 2.0, a, b));
    }
    Ok(report)
}

/// The names of `n` copies of `passthrough` in a chain: `passthrough`, `passthrough-2`, ...
fn chain(n: u64) -> Vec<&'static str> {
    const NAMES: [&str; 8] = [
        "passthrough",
        "passthrough-2",
        "passthrough-3",
        "passthrough-4",
        "passthrough-5",
        "passthrough-6",
        "passthrough-7",
        "passthrough-8",
    ];
    NAMES.iter().take(n as usize).copied().collect()
}

/// "MQTT 5 QoS 1", as the load speaks it.
fn mqtt_label(args: &ThroughputArgs) -> String {
    let version = match args.mqtt_version {
        MqttVersion::V5 => "5",
        MqttVersion::V311 => "3.1.1",
    };
    format!("MQTT {version} QoS {}", args.qos)
}

impl Report {
    fn rate(&self, letter: char) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.name.starts_with(&format!("({letter})")))
            .map(|r| r.rate)
    }

    /// The report as Markdown.
    pub fn markdown(&self, args: &ThroughputArgs) -> String {
        let mut out = format!(
            "throughput: {} messages per scenario, {} connections, {} in flight each, {}-byte payloads; Kafka: tansu 0.6.0 (memory storage, own process)\n\n\
             | scenario | msg/s | p50 ms | p99 ms | p999 ms | CPU s per 1M msgs | peak RSS MiB | lost | duplicated |\n\
             |---|---|---|---|---|---|---|---|---|\n",
            args.messages, args.connections, args.window, args.payload
        );
        let half_rows = self.half_rate.iter().flat_map(|(_, a, b)| [a, b]);
        for r in self.rows.iter().chain(half_rows) {
            out += &r.markdown(format!("{:.0}", r.rate));
        }
        let ratio = |x: char, y: char| match (self.rate(x), self.rate(y)) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        out += &format!(
            "\nratios: b/a {} (target ≥ 0.8), c/b {}, b/d {} (target ≥ 1.5)\n",
            ratio('b', 'a'),
            ratio('c', 'b'),
            ratio('b', 'd')
        );
        if self.rate('i').is_some() {
            out += &format!(
                "against mosquitto taking the messages in alone: b/i {} (target ≥ 1.0)\n",
                ratio('b', 'i')
            );
        }
        if self.rate('r').is_some() || self.rate('s').is_some() {
            out += &format!(
                "recording every message: r/b {}; a shadow on every message: s/b {}\n",
                ratio('r', 'b'),
                ratio('s', 'b')
            );
        }
        if let Some(rate) = self.tls_connects {
            out += &format!(
                "new TLS connections per second (TLS handshake, CONNECT and CONNACK, 4 clients at a time, 5 s): {rate:.0}; f/b {} (TLS cost on throughput)\n",
                ratio('f', 'b')
            );
        }
        if let Some((rate, a, b)) = &self.half_rate {
            out += &format!(
                "latency added by the proxy at half of (b)'s rate ({rate:.0} msg/s): p99 {:.2} ms (b {:.2} − a {:.2}; target ≤ 2 ms)\n",
                b.latency_ms[1] - a.latency_ms[1],
                b.latency_ms[1],
                a.latency_ms[1]
            );
        }
        out
    }
}
