//! Test support for Barnabas's integration tests: a proxy started in-process on loopback ports,
//! Kafka clusters (librdkafka's mock cluster in-process, tansu as a separate process), a Kafka
//! reader, and MQTT helpers over rumqttc and raw packets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use barnabas::{Config, Proxy};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A built plugin under plugins/dist.
pub fn plugin(name: &str) -> PathBuf {
    let path = repo_root()
        .join("plugins/dist")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `make plugins` (or `make test`) first",
        path.display()
    );
    path
}

/// Logs for a test run, once per process (RUST_LOG picks the level).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A proxy started in this process from a routes.yaml text.
pub struct TestProxy {
    /// The running proxy.
    pub proxy: Proxy,
    /// Its MQTT listener.
    pub mqtt: SocketAddr,
    /// Its routes.yaml, to edit for reloads.
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

/// Fills `{plugin:NAME}` with the path of a built plugin and `{bootstrap}` with `bootstrap`.
pub fn routes(yaml: &str, bootstrap: &str) -> String {
    let mut out = yaml.replace("{bootstrap}", bootstrap);
    while let Some(start) = out.find("{plugin:") {
        let end = start + out[start..].find('}').expect("unclosed {plugin:");
        let name = &out[start + 8..end];
        let path = plugin(name).display().to_string();
        out.replace_range(start..=end, &path);
    }
    out
}

impl TestProxy {
    /// Starts a proxy on `yaml` (already filled in). The MQTT listener should bind port 0.
    pub async fn start(yaml: &str) -> TestProxy {
        init_logging();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, yaml).expect("write routes.yaml");
        let config = Config::load(&path).unwrap_or_else(|e| panic!("bad test config:\n{e}"));
        let proxy = Proxy::start(config)
            .await
            .unwrap_or_else(|e| panic!("proxy did not start:\n{e}"));
        let mqtt = proxy.mqtt_addr().expect("an mqtt listener");
        TestProxy {
            proxy,
            mqtt,
            path,
            _dir: dir,
        }
    }
}

/// A routes.yaml with one MQTT listener on a free port, one Kafka destination `kafka`, and the
/// given `plugins:` and `routes:` sections (indented as top-level keys).
pub fn simple_routes(bootstrap: &str, plugins_and_routes: &str) -> String {
    routes(
        &format!(
            "listeners:\n  mqtt: {{ bind: \"127.0.0.1:0\" }}\n\
             destinations:\n  kafka:\n    kind: kafka\n    bootstrap: \"{{bootstrap}}\"\n    \
             options: {{ message.timeout.ms: 5000, linger.ms: 0 }}\n{plugins_and_routes}"
        ),
        bootstrap,
    )
}

/// The `plugins:` and `routes:` of the README's telemetry example: `enrich`, `threshold` and
/// `device-key` in a chain, per-tenant topics and an `alerts` output.
pub const TELEMETRY_ROUTES: &str = r#"
plugins:
  enrich: { wasm: "{plugin:enrich}", config: { site: plant-7, line: 3 } }
  threshold: { wasm: "{plugin:threshold}", config: { field: temperature, min: 0, alert_above: 80 } }
  device-key: { wasm: "{plugin:device-key}" }
routes:
  - name: telemetry
    from: "mqtt:telemetry/+/+"
    plugins: [enrich, threshold, device-key]
    to: "kafka:telemetry.{2}"
    outputs: { alerts: "kafka:alerts" }
"#;

/// A record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Vec<u8>,
}

impl Record {
    /// The value of header `name` as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The payload as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("JSON payload")
    }
}

/// Reads every record of `topic` from the beginning until `want` have arrived or `timeout` passed.
/// Blocking: call it from `spawn_blocking` or a plain thread.
pub fn read_topic(bootstrap: &str, topic: &str, want: usize, timeout: Duration) -> Vec<Record> {
    read_topic_with(bootstrap, &[], topic, want, timeout)
}

/// [`read_topic`] with more librdkafka `options` (TLS, SASL).
pub fn read_topic_with(
    bootstrap: &str,
    options: &[(&str, &str)],
    topic: &str,
    want: usize,
    timeout: Duration,
) -> Vec<Record> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "barnabas-tests")
        .set("enable.auto.commit", "false");
    for (k, v) in options {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer = config.create().expect("consumer");
    let deadline = Instant::now() + timeout;
    // The topic may not exist yet: wait for its metadata.
    let Some(partitions) = barnabas_bench::peers::kafka_partitions(&consumer, topic, timeout)
    else {
        return Vec::new();
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push(Record {
                topic: m.topic().to_string(),
                partition: m.partition(),
                key: m.key().map(<[u8]>::to_vec),
                headers: m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
                payload: m.payload().unwrap_or_default().to_vec(),
            }),
            Some(Err(e)) => tracing::debug!("consumer: {e}"),
            None => {}
        }
    }
    out
}

/// [`read_topic`] from async code.
pub async fn read(bootstrap: &str, topic: &str, want: usize, timeout: Duration) -> Vec<Record> {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || read_topic(&b, &t, want, timeout))
        .await
        .expect("reader thread")
}

pub use barnabas_bench::peers::{Tansu, free_low_port};

pub mod amqp;
pub mod mqtt;

/// `GET http://ADDR/PATH`: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let code = response.status().as_u16();
    let body = response.text().await.expect("body");
    (code, body)
}

/// Scrapes `/metrics` and parses it with a Prometheus text-format parser.
pub async fn scrape(addr: SocketAddr) -> Metrics {
    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    Metrics(prometheus_parse::Scrape::parse(lines).expect("Prometheus text format"))
}

/// One scrape of `/metrics`.
pub struct Metrics(pub prometheus_parse::Scrape);

impl Metrics {
    /// The value of the counter or gauge sample `name` whose labels include `labels` (0 when
    /// absent, as Prometheus treats a series not yet created).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        use prometheus_parse::Value;
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                other => panic!("{name} is not a single value: {other:?}"),
            })
            .sum()
    }
}

/// How many records `topic` holds (the sum of its partitions' high watermarks); 0 if it does not
/// exist. Blocking.
pub fn topic_size(bootstrap: &str, topic: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return 0;
    };
    let Some(t) = md.topics().first() else {
        return 0;
    };
    t.partitions()
        .iter()
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(5))
                .map(|(low, high)| (high - low).max(0) as usize)
                .unwrap_or(0)
        })
        .sum()
}

/// The proxy's binary (debug build), built first so that it is the current code: for tests that
/// run the proxy as a process of its own, to kill it.
pub fn proxy_binary() -> PathBuf {
    let root = repo_root();
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "-p", "barnabas", "--bin", "barnabas"])
        .current_dir(&root)
        .status()
        .expect("cargo build");
    assert!(status.success(), "cargo build -p barnabas failed");
    root.join("target/debug/barnabas")
}
