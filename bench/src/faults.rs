//! Fault runs: the proxy under MQTT QoS 1 load while something breaks on purpose, counting what
//! clients were told was delivered against what the broker holds.
//!
//! Each row of RELIABILITY.md's fault table comes from one scenario here:
//! - `proxy-kill`: the proxy process is SIGKILLed mid-stream and started again on the same port;
//! - `broker-stall`: the broker is unreachable for a while behind a TCP relay that stops
//!   forwarding, then comes back; the proxy's resident memory is sampled throughout;
//! - `hostile-plugins`: plugins that loop, sleep, hoard memory, flood outputs and trap run on one
//!   route while another route's latency is measured against its own baseline;
//! - `idle-flood`: thousands of connections that never send CONNECT and a flood of AMQP logins
//!   with a wrong password, while a real client's latency is measured against its baseline.
//!
//! The clients are the proxy's users as they behave: MQTT 5, QoS 1, a window of messages in
//! flight; a message answered with a failure code is sent again; a lost connection is opened
//! again and everything not yet acknowledged is resent. So "lost" is a message a client was told
//! was delivered and that is not in Kafka, and "duplicated" is the extra copies at-least-once
//! allows.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::BytesMut;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::load::{parse_payload, payload};
use crate::peers::{self, free_low_port};

/// Which fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// SIGKILL the Kafka broker mid-stream (its storage in PostgreSQL) and start it again.
    BrokerKill,
    /// SIGKILL the proxy mid-stream and start it again.
    ProxyKill,
    /// Stop forwarding to the broker for a while, then resume.
    BrokerStall,
    /// Hostile plugins on one route, latency measured on another.
    HostilePlugins,
    /// Connections that never CONNECT and wrong-password logins, latency measured meanwhile.
    IdleFlood,
}

/// `bench faults`: the fault runs, short (for the test suite) or long (for RELIABILITY.md).
#[derive(Debug, Clone, clap::Args)]
pub struct FaultArgs {
    /// The scenarios to run (all when none is named).
    #[arg(long = "fault", value_enum)]
    pub faults: Vec<Fault>,
    /// The long form: more clients, more messages, a 30 s stall, 10,000 idle connections.
    #[arg(long)]
    pub long: bool,
    /// The proxy binary to run.
    #[arg(long, default_value = "target/release/barnabas")]
    pub binary: PathBuf,
    /// The built plugins (`make plugins`).
    #[arg(long, default_value = "plugins/dist")]
    pub plugins: PathBuf,
    /// How long the broker stays unreachable in `broker-stall`, in seconds (12, or 30 with
    /// `--long`).
    #[arg(long)]
    pub stall_secs: Option<u64>,
}

impl FaultArgs {
    fn size(&self) -> Size {
        let mut size = self.base_size();
        if let Some(s) = self.stall_secs {
            size.stall = Duration::from_secs(s);
        }
        size
    }

    fn base_size(&self) -> Size {
        if self.long {
            Size {
                clients: 8,
                messages: 5_000,
                stall: Duration::from_secs(30),
                idle: 10_000,
                logins: 200,
                latency_messages: 6_000,
                hostile: 8,
            }
        } else {
            Size {
                clients: 3,
                messages: 400,
                // Longer than the producer's message timeout (10 s): a produce request times out
                // in flight, which is what breaks an idempotent producer against some brokers.
                stall: Duration::from_secs(12),
                idle: 500,
                logins: 10,
                latency_messages: 300,
                hostile: 4,
            }
        }
    }
}

/// How much load a run puts on.
#[derive(Debug, Clone, Copy)]
struct Size {
    clients: usize,
    messages: u64,
    stall: Duration,
    idle: usize,
    logins: usize,
    latency_messages: u64,
    /// Connections sending hostile payloads, two in flight each.
    hostile: usize,
}

/// One row of the fault table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// The scenario.
    pub fault: String,
    /// Messages the clients were told were delivered (success acknowledgements).
    pub acked: usize,
    /// Distinct acknowledged messages found in Kafka.
    pub found: usize,
    /// Acknowledged messages not in Kafka. The promise: 0.
    pub lost: usize,
    /// Extra copies in Kafka of messages found there.
    pub duplicated: usize,
    /// Failure acknowledgements and reconnections the clients went through.
    pub retries: u64,
    /// What else was measured (memory, latency ratios).
    pub note: String,
}

/// The fault table.
#[derive(Debug, Default)]
pub struct Report {
    /// One row per scenario run.
    pub rows: Vec<Row>,
}

impl Report {
    /// The table as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| fault | acked | found | lost | duplicated | client retries | measured |\n|---|---:|---:|---:|---:|---:|---|\n",
        );
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                r.fault, r.acked, r.found, r.lost, r.duplicated, r.retries, r.note
            ));
        }
        out
    }
}

/// Runs the scenarios `args` names.
pub async fn run(args: &FaultArgs) -> anyhow::Result<Report> {
    let _ = barnabas::raise_open_file_limit();
    let faults = if args.faults.is_empty() {
        vec![
            Fault::BrokerKill,
            Fault::ProxyKill,
            Fault::BrokerStall,
            Fault::HostilePlugins,
            Fault::IdleFlood,
        ]
    } else {
        args.faults.clone()
    };
    let mut report = Report::default();
    for fault in faults {
        let row = match fault {
            Fault::BrokerKill => broker_kill(args).await,
            Fault::ProxyKill => proxy_kill(args).await,
            Fault::BrokerStall => broker_stall(args).await,
            Fault::HostilePlugins => hostile_plugins(args).await,
            Fault::IdleFlood => idle_flood(args).await,
        }
        .with_context(|| format!("fault run {fault:?}"))?;
        report.rows.push(row);
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// The scenarios.

/// The Kafka broker is SIGKILLed once a third of the messages are acknowledged, and started
/// again on the same port a second later. Its storage is a PostgreSQL database, a process of its
/// own that the kill does not touch: what the broker acknowledged was committed there.
async fn broker_kill(args: &FaultArgs) -> anyhow::Result<Row> {
    let size = args.size();
    let pg = peers::Postgres::start()?;
    let broker_port = free_low_port();
    let start = || {
        peers::Tansu::start_with(broker_port, None, &pg.url)
            .context("tansu with PostgreSQL storage (its `postgres` feature: run `make setup`)")
    };
    let mut broker = Some(start()?);
    let bootstrap = format!("127.0.0.1:{broker_port}");
    if let Some(b) = &broker {
        b.try_create_topic("faults", 3)?;
    }
    let dir = tempfile::tempdir()?;
    let port = free_low_port();
    let config = write_config(dir.path(), port, &bootstrap, "", "")?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let _proxy = peers::barnabas(&args.binary, &config, &addr.to_string())?;

    let total = size.clients as u64 * size.messages;
    let (clients, progress) = start_clients(addr, "bkill", "faults", size.clients, size.messages);
    wait_until(
        || progress.load(Ordering::Relaxed) >= total / 3,
        Duration::from_secs(120),
    )
    .await?;
    drop(broker.take()); // SIGKILL
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _broker = start()?;
    let outcome = finish(clients).await?;
    let mut row = count(&bootstrap, "faults", &outcome).await?;
    row.fault = "Kafka broker (tansu, PostgreSQL storage) SIGKILLed and restarted".into();
    row.note = format!("{} clients × {} messages", size.clients, size.messages);
    Ok(row)
}

/// The proxy is SIGKILLed once a third of the messages are acknowledged, and started again on
/// the same port half a second later.
async fn proxy_kill(args: &FaultArgs) -> anyhow::Result<Row> {
    let size = args.size();
    let kafka = barnabas::brokers::EmbeddedKafka::start().map_err(anyhow::Error::msg)?;
    let dir = tempfile::tempdir()?;
    let port = free_low_port();
    let config = write_config(dir.path(), port, kafka.bootstrap(), "", "")?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut proxy = Some(peers::barnabas(&args.binary, &config, &addr.to_string())?);

    let total = size.clients as u64 * size.messages;
    let (clients, progress) = start_clients(addr, "kill", "faults", size.clients, size.messages);
    wait_until(
        || progress.load(Ordering::Relaxed) >= total / 3,
        Duration::from_secs(120),
    )
    .await?;
    drop(proxy.take()); // SIGKILL
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _proxy = peers::barnabas(&args.binary, &config, &addr.to_string())?;
    let outcome = finish(clients).await?;
    let mut row = count(kafka.bootstrap(), "faults", &outcome).await?;
    row.fault = "proxy SIGKILLed and restarted".into();
    row.note = format!("{} clients × {} messages", size.clients, size.messages);
    Ok(row)
}

/// The broker is reached through a relay (it advertises the relay's address); the relay stops
/// forwarding for `stall` once a third of the messages are acknowledged. The proxy's resident
/// memory is sampled every 200 ms; its in-flight budget is 16 MiB.
async fn broker_stall(args: &FaultArgs) -> anyhow::Result<Row> {
    let size = args.size();
    let relay_port = free_low_port();
    let broker_port = free_low_port();
    let broker = peers::Tansu::start_on(broker_port, Some(&format!("127.0.0.1:{relay_port}")))?;
    broker.try_create_topic("faults", 1)?;
    let relay = Relay::start(relay_port, broker_port).await?;
    let bootstrap = format!("127.0.0.1:{relay_port}");
    let dir = tempfile::tempdir()?;
    let mqtt = free_low_port();
    let config = write_config(
        dir.path(),
        mqtt,
        &bootstrap,
        "",
        "limits: { max_inflight_bytes: 16777216 }\n",
    )?;
    let addr: SocketAddr = format!("127.0.0.1:{mqtt}").parse()?;
    let proxy = peers::barnabas(&args.binary, &config, &addr.to_string())?;
    let pid = proxy.pid();
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(kib) = peers::rss(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let before = peers::rss(pid).unwrap_or_default();

    let total = size.clients as u64 * size.messages;
    let (clients, progress) = start_clients(addr, "stall", "faults", size.clients, size.messages);
    wait_until(
        || progress.load(Ordering::Relaxed) >= total / 3,
        Duration::from_secs(120),
    )
    .await?;
    relay.pause(true);
    tokio::time::sleep(size.stall).await;
    relay.pause(false);
    let outcome = finish(clients).await?;
    sampling.abort();
    let mut row = count(&bootstrap, "faults", &outcome).await?;
    row.fault = format!(
        "Kafka unreachable for {} s behind a stalled relay",
        size.stall.as_secs()
    );
    row.note = format!(
        "proxy RSS {} MiB before, {} MiB at most (in-flight budget 16 MiB)",
        before / 1024,
        peak.load(Ordering::Relaxed) / 1024
    );
    if let Some(first) = outcome.failures.first() {
        tracing::info!(first, "failure acknowledgements seen");
    }
    Ok(row)
}

/// A route whose plugins loop, sleep, hoard memory, flood outputs and trap (each on its own
/// payload) takes a stream of such messages from several clients, while a client on another
/// route publishes at a steady rate. Its p99 acknowledgement latency is compared with a run of
/// the same client alone.
async fn hostile_plugins(args: &FaultArgs) -> anyhow::Result<Row> {
    let size = args.size();
    let kafka = barnabas::brokers::EmbeddedKafka::start().map_err(anyhow::Error::msg)?;
    let dir = tempfile::tempdir()?;
    let port = free_low_port();
    let chaos = args.plugins.join("chaos.wasm");
    let passthrough = args.plugins.join("passthrough.wasm");
    let mut plugins = format!(
        "plugins:\n  pass: {{ wasm: \"{}\" }}\n",
        abs(&passthrough)?.display()
    );
    let behaviours = ["loop", "sleep", "oom", "flood", "trap"];
    for b in behaviours {
        plugins.push_str(&format!(
            "  {b}: {{ wasm: \"{}\", config: {{ behaviour: {b}, when_payload: {b} }}, timeout_ms: 10, memory_mb: 8 }}\n",
            abs(&chaos)?.display()
        ));
    }
    let routes = format!(
        "routes:\n  - {{ name: hostile, from: \"mqtt:hostile/#\", plugins: [{}], to: \"kafka:hostile\", on_error: reject }}\n",
        behaviours.join(", ")
    );
    let config = write_config(dir.path(), port, kafka.bootstrap(), &plugins, &routes)?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let _proxy = peers::barnabas(&args.binary, &config, &addr.to_string())?;

    // Warm up (the producer's connections, the first instances), then measure alone.
    steady_client(addr, "warm", 100).await?;
    let baseline = steady_client(addr, "base", size.latency_messages).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let hostile: Vec<_> = (0..size.hostile)
        .map(|i| {
            let stop = stop.clone();
            tokio::spawn(hostile_client(addr, format!("hostile-{i}"), stop))
        })
        .collect();
    let under = steady_client(addr, "under", size.latency_messages).await?;
    stop.store(true, Ordering::Relaxed);
    let mut hostile_sent = 0;
    for h in hostile {
        hostile_sent += h.await.unwrap_or_default();
    }
    let outcome = ClientsOutcome {
        acked: baseline.acked.iter().chain(&under.acked).cloned().collect(),
        retries: baseline.retries + under.retries,
        failures: Vec::new(),
    };
    let mut row = count(kafka.bootstrap(), "faults", &outcome).await?;
    row.fault = "hostile plugins (loop, sleep, memory, output flood, trap) on another route".into();
    row.note = format!(
        "{hostile_sent} hostile messages; steady route p99 {:.1} ms alone, {:.1} ms beside them ({:.2}x)",
        baseline.p99_ms(),
        under.p99_ms(),
        under.p99_ms() / baseline.p99_ms().max(0.001)
    );
    Ok(row)
}

/// `idle` connections that never send CONNECT and `logins` AMQP logins with a wrong password,
/// while a client publishes at a steady rate; its p99 is compared with its baseline.
async fn idle_flood(args: &FaultArgs) -> anyhow::Result<Row> {
    let size = args.size();
    let kafka = barnabas::brokers::EmbeddedKafka::start().map_err(anyhow::Error::msg)?;
    let dir = tempfile::tempdir()?;
    let port = free_low_port();
    let amqp_port = free_low_port();
    // alice's password is "secret". The steady MQTT client connects anonymously.
    let listeners = format!(
        "listeners:\n  mqtt: {{ bind: \"127.0.0.1:{port}\", connect_timeout_ms: 120000 }}\n  amqp: {{ bind: \"127.0.0.1:{amqp_port}\" }}\n"
    );
    let auth = "auth:\n  anonymous: true\n  users: { alice: \"$argon2id$v=19$m=19456,t=2,p=1$JuuwxA74eh8o1Z7tDoMAIg$mL8KcP90n05JK/2Tg6Uwg7OYP4bEV0rafUmxqkDZ2wE\" }\n";
    let config = write_config_with(dir.path(), &listeners, kafka.bootstrap(), "", auth)?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let _proxy = peers::barnabas(&args.binary, &config, &addr.to_string())?;

    // Warm up (the producer's connections, the first instances), then measure alone.
    steady_client(addr, "warm", 100).await?;
    let baseline = steady_client(addr, "base", size.latency_messages).await?;
    let mut idle = Vec::with_capacity(size.idle);
    for _ in 0..size.idle {
        match TcpStream::connect(addr).await {
            Ok(s) => idle.push(s),
            Err(_) => break,
        }
    }
    let opened = idle.len();
    let stop = Arc::new(AtomicBool::new(false));
    let amqp: SocketAddr = format!("127.0.0.1:{amqp_port}").parse()?;
    let floods: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            let per = size.logins.div_ceil(4);
            tokio::spawn(async move {
                let mut refused = 0usize;
                for _ in 0..per {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if wrong_login(amqp).await {
                        refused += 1;
                    }
                }
                refused
            })
        })
        .collect();
    let under = steady_client(addr, "under", size.latency_messages).await?;
    stop.store(true, Ordering::Relaxed);
    let mut refused = 0;
    for f in floods {
        refused += f.await.unwrap_or_default();
    }
    drop(idle);
    let outcome = ClientsOutcome {
        acked: baseline.acked.iter().chain(&under.acked).cloned().collect(),
        retries: baseline.retries + under.retries,
        failures: Vec::new(),
    };
    let mut row = count(kafka.bootstrap(), "faults", &outcome).await?;
    row.fault = format!("{opened} connections without CONNECT + wrong-password AMQP logins");
    row.note = format!(
        "{refused} logins refused; steady client p99 {:.1} ms alone, {:.1} ms during ({:.2}x)",
        baseline.p99_ms(),
        under.p99_ms(),
        under.p99_ms() / baseline.p99_ms().max(0.001)
    );
    Ok(row)
}

// ---------------------------------------------------------------------------------------------
// Parts.

/// A routes.yaml with an MQTT listener on `port`, a Kafka destination `kafka` at `bootstrap`,
/// a default route `mqtt:faults/#` → `kafka:faults`, and `plugins`/`routes` extras.
fn write_config(
    dir: &Path,
    port: u16,
    bootstrap: &str,
    plugins: &str,
    extra: &str,
) -> anyhow::Result<PathBuf> {
    let listeners = format!("listeners:\n  mqtt: {{ bind: \"127.0.0.1:{port}\" }}\n");
    write_config_with(dir, &listeners, bootstrap, plugins, extra)
}

fn write_config_with(
    dir: &Path,
    listeners: &str,
    bootstrap: &str,
    plugins: &str,
    extra: &str,
) -> anyhow::Result<PathBuf> {
    // Routes may come from `extra` too: the default route goes first in its own list.
    let (more_routes, rest) = match extra.strip_prefix("routes:\n") {
        Some(r) => (r.to_string(), String::new()),
        None => (String::new(), extra.to_string()),
    };
    // `BENCH_KAFKA_OPTIONS="debug: eos"` (say) adds producer options, to see what librdkafka does.
    let options = std::env::var("BENCH_KAFKA_OPTIONS")
        .map(|o| format!(", {o}"))
        .unwrap_or_default();
    let yaml = format!(
        "{listeners}destinations:\n  kafka: {{ kind: kafka, bootstrap: \"{bootstrap}\", options: {{ linger.ms: 1{options} }} }}\n{plugins}routes:\n  - {{ name: faults, from: \"mqtt:faults/#\", to: \"kafka:faults\" }}\n{more_routes}{rest}"
    );
    let path = dir.join("routes.yaml");
    std::fs::write(&path, yaml)?;
    Ok(path)
}

fn abs(p: &Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("{}: run `make plugins`", p.display()))
}

async fn wait_until(done: impl Fn() -> bool, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            bail!("not reached within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// What the clients of a run were told.
#[derive(Debug, Default)]
struct ClientsOutcome {
    /// Ids acknowledged with success.
    acked: Vec<String>,
    /// The first failure acknowledgements the clients saw.
    failures: Vec<String>,
    /// Failure acknowledgements and reconnections.
    retries: u64,
}

type Clients = Vec<tokio::task::JoinHandle<anyhow::Result<ClientResult>>>;

fn start_clients(
    addr: SocketAddr,
    prefix: &str,
    topic: &str,
    clients: usize,
    messages: u64,
) -> (Clients, Arc<AtomicU64>) {
    let progress = Arc::new(AtomicU64::new(0));
    let handles = (0..clients)
        .map(|i| {
            let client = Resender {
                addr,
                client_id: format!("{prefix}-{i}"),
                topic: format!("{topic}/{i}"),
                messages,
                window: 16,
                rate: None,
                progress: progress.clone(),
                deadline: Duration::from_secs(300),
            };
            tokio::spawn(client.run())
        })
        .collect();
    (handles, progress)
}

async fn finish(clients: Clients) -> anyhow::Result<ClientsOutcome> {
    let mut outcome = ClientsOutcome::default();
    for c in clients {
        let r = c.await??;
        outcome.acked.extend(r.acked);
        if outcome.failures.len() < 5 {
            outcome.failures.extend(r.failures);
        }
        outcome.retries += r.retries;
    }
    Ok(outcome)
}

/// A client that sends `latency_messages` at 200 messages per second on `faults/steady` and
/// records each one's acknowledgement latency.
async fn steady_client(addr: SocketAddr, id: &str, messages: u64) -> anyhow::Result<ClientResult> {
    Resender {
        addr,
        client_id: format!("steady-{id}"),
        topic: "faults/steady".into(),
        messages,
        window: 8,
        rate: Some(200.0),
        progress: Arc::default(),
        deadline: Duration::from_secs(120),
    }
    .run()
    .await
}

/// Publishes hostile payloads round the behaviours until `stop`; returns how many were answered.
async fn hostile_client(addr: SocketAddr, id: String, stop: Arc<AtomicBool>) -> usize {
    let behaviours = ["loop", "sleep", "oom", "flood", "trap"];
    let Ok(mut conn) = Conn::open(addr, &id).await else {
        return 0;
    };
    let mut answered = 0;
    let mut pkid = 0u16;
    // Two in flight: the sleeping plugin holds a message for its 1 s bound.
    let mut in_flight = 0;
    while !stop.load(Ordering::Relaxed) {
        while in_flight < 2 {
            pkid = pkid.wrapping_add(1).max(1);
            let b = behaviours[usize::from(pkid) % behaviours.len()];
            if conn.publish("hostile/x", pkid, b.as_bytes()).await.is_err() {
                return answered;
            }
            in_flight += 1;
        }
        // Long enough for a queue of sleeping calls (1 s each) ahead of this one on the route.
        match tokio::time::timeout(Duration::from_secs(60), conn.next()).await {
            Ok(Ok(Some(v5::Packet::PubAck(_)))) => {
                in_flight -= 1;
                answered += 1;
            }
            Ok(Ok(_)) => {}
            _ => return answered,
        }
    }
    answered
}

/// One AMQP login with a wrong password; whether the proxy refused it.
async fn wrong_login(addr: SocketAddr) -> bool {
    let url = format!("amqp://alice:wrong@{addr}");
    let attempt = fe2o3_amqp::Connection::open("intruder", url.as_str());
    matches!(
        tokio::time::timeout(Duration::from_secs(10), attempt).await,
        Ok(Err(_))
    )
}

/// Reads `topic` and counts the acknowledged ids in it.
async fn count(bootstrap: &str, topic: &str, outcome: &ClientsOutcome) -> anyhow::Result<Row> {
    let acked: HashSet<String> = outcome.acked.iter().cloned().collect();
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    let want = acked.clone();
    let seen = tokio::task::spawn_blocking(move || read_ids(&bootstrap, &topic, &want)).await??;
    let found = acked.iter().filter(|id| seen.contains_key(*id)).count();
    Ok(Row {
        acked: acked.len(),
        found,
        lost: acked.len() - found,
        duplicated: seen.values().map(|n| n - 1).sum(),
        retries: outcome.retries,
        ..Row::default()
    })
}

/// Every id in `topic`, with how many times it is there. Reads until every id of `want` was seen,
/// or nothing new came for 5 s.
fn read_ids(
    bootstrap: &str,
    topic: &str,
    want: &HashSet<String>,
) -> anyhow::Result<HashMap<String, usize>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "barnabas-faults")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()?;
    let partitions = peers::kafka_partitions(&consumer, topic, Duration::from_secs(30))
        .with_context(|| format!("no metadata for topic {topic}"))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut missing = want.len();
    let mut last_new = std::time::Instant::now();
    // Every wanted id, then 2 s more for late duplicates; or give up after 10 s without news.
    while missing > 0 || last_new.elapsed() < Duration::from_secs(2) {
        if last_new.elapsed() > Duration::from_secs(10) {
            break;
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            last_new = std::time::Instant::now();
            if let Some((id, _)) = parse_payload(m.payload().unwrap_or_default()) {
                let n = seen.entry(id.clone()).or_default();
                *n += 1;
                if *n == 1 && want.contains(&id) {
                    missing -= 1;
                }
            }
        }
    }
    Ok(seen)
}

// ---------------------------------------------------------------------------------------------
// The resending client.

/// How long a client waits before sending a message answered with a failure code again.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// What one resending client saw.
#[derive(Debug, Default)]
struct ClientResult {
    acked: Vec<String>,
    retries: u64,
    /// The first few failure acknowledgements, for the report.
    failures: Vec<String>,
    /// Send-to-acknowledgement time of each acknowledged message, in microseconds.
    latencies: Vec<u64>,
}

impl ClientResult {
    fn p99_ms(&self) -> f64 {
        let mut v = self.latencies.clone();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_unstable();
        v[((v.len() as f64 * 0.99) as usize).min(v.len() - 1)] as f64 / 1000.0
    }
}

/// An MQTT 5 QoS 1 client that keeps at most `window` messages in flight, resends a message
/// answered with a failure code, and after a lost connection reconnects (every 200 ms until it
/// can) and resends everything not yet acknowledged, in order.
struct Resender {
    addr: SocketAddr,
    client_id: String,
    topic: String,
    messages: u64,
    window: usize,
    /// Messages per second; flat out when unset.
    rate: Option<f64>,
    /// Counts successful acknowledgements across clients.
    progress: Arc<AtomicU64>,
    /// Gives up after this long.
    deadline: Duration,
}

impl Resender {
    async fn run(self) -> anyhow::Result<ClientResult> {
        let started = Instant::now();
        let give_up = started + self.deadline;
        let pad = "x".repeat(64);
        // Each message's payload is made once: a resend is the same message.
        let mut todo: VecDeque<u64> = (0..self.messages).collect();
        let mut payloads: HashMap<u64, (String, Instant)> = HashMap::new();
        let mut result = ClientResult::default();
        let mut pkid = 0u16;
        // When a message answered with a failure may go again.
        let mut retry_at: HashMap<u64, Instant> = HashMap::new();
        loop {
            if todo.is_empty() && payloads.is_empty() {
                return Ok(result);
            }
            if Instant::now() > give_up {
                bail!(
                    "{}: {} messages unacknowledged after {:?}",
                    self.client_id,
                    todo.len(),
                    self.deadline
                );
            }
            let mut conn = match Conn::open(self.addr, &self.client_id).await {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut in_flight: HashMap<u16, u64> = HashMap::new();
            let broken = 'conn: loop {
                // Send what is due and fits in the window; with a rate, a message is due at its
                // place on the schedule, and acknowledgements are read meanwhile.
                let mut next_due = None;
                while in_flight.len() < self.window
                    && let Some(&seq) = todo.front()
                {
                    let mut due = retry_at.get(&seq).copied();
                    if let Some(rate) = self.rate {
                        due = due.max(Some(started + Duration::from_secs_f64(seq as f64 / rate)));
                    }
                    if let Some(due) = due.filter(|d| *d > Instant::now()) {
                        next_due = Some(due);
                        break;
                    }
                    todo.pop_front();
                    retry_at.remove(&seq);
                    let entry = payloads
                        .entry(seq)
                        .or_insert_with(|| (payload(&self.client_id, seq, &pad), Instant::now()));
                    // A packet id is never reused while its message is in flight.
                    loop {
                        pkid = pkid.wrapping_add(1).max(1);
                        if !in_flight.contains_key(&pkid) {
                            break;
                        }
                    }
                    if conn
                        .publish(&self.topic, pkid, entry.0.as_bytes())
                        .await
                        .is_err()
                    {
                        todo.push_front(seq);
                        break 'conn true;
                    }
                    in_flight.insert(pkid, seq);
                }
                if in_flight.is_empty() && todo.is_empty() {
                    break false;
                }
                let packet = tokio::select! {
                    packet = tokio::time::timeout(Duration::from_secs(30), conn.next()) => packet,
                    _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => continue,
                };
                match packet {
                    Ok(Ok(Some(v5::Packet::PubAck(ack)))) => {
                        let Some(seq) = in_flight.remove(&ack.pkid) else {
                            continue;
                        };
                        if ack.reason == v5::PubAckReason::Success {
                            if let Some((_, sent)) = payloads.remove(&seq) {
                                result.latencies.push(sent.elapsed().as_micros() as u64);
                                result.acked.push(format!("{}-{seq}", self.client_id));
                            }
                            self.progress.fetch_add(1, Ordering::Relaxed);
                        } else {
                            // Not delivered: send it again after a pause, as clients do.
                            result.retries += 1;
                            if result.failures.len() < 5 {
                                result.failures.push(format!(
                                    "{:?} {:?}",
                                    ack.reason,
                                    ack.properties.and_then(|p| p.reason_string)
                                ));
                            }
                            retry_at.insert(seq, Instant::now() + RETRY_PAUSE);
                            todo.push_back(seq);
                        }
                    }
                    Ok(Ok(Some(_))) => {}
                    _ => break true,
                }
            };
            if broken {
                result.retries += 1;
                // Everything unacknowledged goes again, in its original order.
                let mut again: Vec<u64> = in_flight.into_values().collect();
                again.sort_unstable();
                for seq in again.into_iter().rev() {
                    todo.push_front(seq);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One MQTT 5 connection, spoken with rumqttc's packet codec.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    async fn open(addr: SocketAddr, client_id: &str) -> anyhow::Result<Conn> {
        let stream =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await??;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            buf: BytesMut::new(),
        };
        conn.send(v5::Packet::Connect(
            v5::Connect {
                keep_alive: 30,
                client_id: client_id.into(),
                clean_start: true,
                properties: None,
            },
            None,
            None,
        ))
        .await?;
        match tokio::time::timeout(Duration::from_secs(5), conn.next()).await?? {
            Some(v5::Packet::ConnAck(c)) if c.code == v5::ConnectReturnCode::Success => Ok(conn),
            other => bail!("no CONNACK: {other:?}"),
        }
    }

    async fn send(&mut self, p: v5::Packet) -> anyhow::Result<()> {
        let mut b = BytesMut::new();
        p.write(&mut b, None)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        self.stream.write_all(&b).await?;
        Ok(())
    }

    async fn publish(&mut self, topic: &str, pkid: u16, payload: &[u8]) -> anyhow::Result<()> {
        let mut p = v5::Publish::new(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            payload.to_vec(),
            None,
        );
        p.pkid = pkid;
        self.send(v5::Packet::Publish(p)).await
    }

    /// The next packet, or `None` when the server closed the connection.
    async fn next(&mut self) -> anyhow::Result<Option<v5::Packet>> {
        loop {
            match v5::Packet::read(&mut self.buf, None) {
                Ok(p) => return Ok(Some(p)),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => bail!("server sent garbage: {e:?}"),
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The relay.

/// A TCP relay from a loopback port to another that can stop forwarding: while paused, bytes are
/// neither read nor written in either direction and new connections wait, as behind a network
/// partition that drops nothing and answers nothing.
struct Relay {
    paused: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(port: u16, to: u16) -> anyhow::Result<Relay> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let paused = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let p = paused.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let paused = p.clone();
                let handle = tokio::spawn(async move {
                    while paused.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", to)).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pipe(cr, sw, paused.clone()), pipe(sr, cw, paused.clone()));
                });
                if let Ok(mut c) = conns.lock() {
                    c.push(handle);
                }
            }
        });
        Ok(Relay { paused, task })
    }

    fn pause(&self, on: bool) {
        self.paused.store(on, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    paused: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while paused.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let n = match tokio::time::timeout(Duration::from_millis(100), from.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
            // Look at the pause flag again.
            Err(_) => continue,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
