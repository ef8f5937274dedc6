//! Live reload under load: MQTT 5 clients publish QoS 1 flat out while routes.yaml is rewritten 20
//! times (topic changes, swaps between two plugin builds, invalid edits in between). Nothing
//! acknowledged is lost, every message is processed by one plugin build only, an invalid edit
//! changes nothing, and each valid edit serves within a second of the write.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use barnabas_bench::load::{Load, LoadReport, MqttVersion};
use barnabas_tests::mqtt::{Ack, publish_v5};
use barnabas_tests::{TestProxy, http_get, plugin, read, simple_routes, topic_size};
use rdkafka::mocking::MockCluster;

const CLIENTS: usize = 4;
const WINDOW: u16 = 32;
const WRITES: usize = 20;
/// How long a valid edit may take from the write to serving messages.
const SERVES_WITHIN: Duration = Duration::from_secs(1);

/// The routes: two plugins, both the chaos fixture from the same build, each stamping its build
/// into a `chaos-build` header (the second into `chaos-build-2`); the route writes to `topic`.
fn config(dir: &Path, bootstrap: &str, topic: &str, build: u8) -> String {
    let wasm = dir.join(format!("stamp-{build}.wasm"));
    let wasm = wasm.display();
    simple_routes(
        bootstrap,
        &format!(
            r#"
plugins:
  first: {{ wasm: "{wasm}", config: {{ behaviour: none, stamp_build: true }} }}
  second: {{ wasm: "{wasm}", config: {{ behaviour: none, stamp_build: true }} }}
routes:
  - name: soak
    from: "mqtt:soak/#"
    plugins: [first, second]
    to: "kafka:{topic}"
admin: {{ bind: "127.0.0.1:0" }}
"#
        ),
    )
}

/// Four kinds of invalid edit of a valid config, each caught at a different stage.
fn invalid(valid: &str, n: usize) -> String {
    match n % 4 {
        // A YAML syntax error.
        0 => valid.replace("plugins: [first, second]", "plugins: [first, second"),
        // A route naming a plugin that does not exist.
        1 => valid.replace("plugins: [first, second]", "plugins: [first, secnod]"),
        // A plugin file that does not exist.
        2 => valid.replacen("stamp-", "stamp-missing-", 1),
        // A plugin file that is not a component.
        _ => valid.replacen("stamp-", "not-a-component-", 1),
    }
}

/// Saves like an editor: a new file renamed over the old one.
fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn status(admin: std::net::SocketAddr) -> serde_json::Value {
    let (code, body) = http_get(admin, "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_edits_under_load_lose_nothing() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(plugin("chaos"), dir.path().join("stamp-1.wasm")).unwrap();
    std::fs::copy(plugin("chaos-build2"), dir.path().join("stamp-2.wasm")).unwrap();
    std::fs::write(dir.path().join("not-a-component-1.wasm"), b"\0asm garbage").unwrap();
    std::fs::write(dir.path().join("not-a-component-2.wasm"), b"\0asm garbage").unwrap();

    let (mut topic, mut build) = ("soak.a", 1u8);
    let t = TestProxy::start(&config(dir.path(), &bootstrap, topic, build)).await;
    let admin = t.proxy.admin_addr().unwrap();
    // Every (topic, build) pair a snapshot served; a record outside this set would have been
    // processed by a mix of versions.
    let mut served = BTreeSet::from([(topic.to_string(), build.to_string())]);
    // Probe payloads and the (topic, build) each must have been processed by.
    let mut probes: HashMap<String, (String, String)> = HashMap::new();

    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(
                Load {
                    addr: t.mqtt,
                    client_id: format!("load{i}"),
                    topic: format!("soak/dev{i}"),
                    window: WINDOW,
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
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut generation = t.proxy.pipeline().snapshot().generation;
    for write in 0..WRITES {
        let valid = write % 3 != 2;
        let written = Instant::now();
        let written_ms = unix_ms();
        if valid {
            if write % 3 == 0 {
                topic = if topic == "soak.a" {
                    "soak.b"
                } else {
                    "soak.a"
                };
            } else {
                build = 3 - build;
            }
            save(&t.path, &config(dir.path(), &bootstrap, topic, build));
            // Applied within the second...
            while t.proxy.pipeline().snapshot().generation == generation {
                assert!(
                    written.elapsed() < SERVES_WITHIN,
                    "edit {write} not applied within {SERVES_WITHIN:?}"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            generation = t.proxy.pipeline().snapshot().generation;
            served.insert((topic.to_string(), build.to_string()));
        } else {
            let good = config(dir.path(), &bootstrap, topic, build);
            save(&t.path, &invalid(&good, write / 3));
            // Rejected within the second, with the old snapshot still serving.
            loop {
                let s = status(admin).await;
                let last = &s["last_reload"];
                if last["result"] == "rejected" && last["at_unix_ms"].as_u64() >= Some(written_ms) {
                    assert!(!last["errors"].as_array().unwrap().is_empty());
                    break;
                }
                assert!(
                    written.elapsed() < SERVES_WITHIN,
                    "invalid edit {write} not reported within {SERVES_WITHIN:?}: {last}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(t.proxy.pipeline().snapshot().generation, generation);
        }
        // ...and serving: a message published now is processed by what was just written (or,
        // after an invalid edit, by what served before it).
        let probe = format!("probe-{write}");
        let ack = publish_v5(t.mqtt, "prober", "soak/probe", 1, probe.as_bytes(), None).await;
        assert!(
            matches!(ack, Ack::Acked { code: 0, .. }),
            "{probe}: {ack:?}"
        );
        if valid {
            assert!(
                written.elapsed() < SERVES_WITHIN,
                "edit {write} took {:?} from write to a served message",
                written.elapsed()
            );
        }
        probes.insert(probe, (topic.to_string(), build.to_string()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for handle in load {
        let LoadReport {
            acked: a,
            refused,
            error,
        } = handle.await.unwrap();
        assert_eq!(error, None);
        assert!(
            refused.is_empty(),
            "refused: {:?}",
            &refused[..refused.len().min(5)]
        );
        acked.extend(a);
    }
    assert!(
        acked.len() >= 10_000,
        "only {} messages acknowledged: too little load to prove anything",
        acked.len()
    );

    // Everything both topics hold.
    let mut records = Vec::new();
    for topic in ["soak.a", "soak.b"] {
        let (b, tp) = (bootstrap.clone(), topic.to_string());
        let size = tokio::task::spawn_blocking(move || topic_size(&b, &tp))
            .await
            .unwrap();
        let got = read(&bootstrap, topic, size, Duration::from_secs(60)).await;
        assert_eq!(got.len(), size, "{topic}: read {} of {size}", got.len());
        records.extend(got);
    }
    let mut by_payload: HashMap<String, (String, String)> = HashMap::new();
    for r in &records {
        let payload = String::from_utf8(r.payload.clone()).unwrap();
        let builds: Vec<String> = r
            .headers
            .iter()
            .filter(|(n, _)| n.starts_with("chaos-build"))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect();
        // Both plugins of the chain ran, from the same build.
        assert_eq!(builds.len(), 2, "{payload}: {builds:?}");
        assert_eq!(
            builds[0], builds[1],
            "{payload} was processed by two builds"
        );
        let version = (r.topic.clone(), builds[0].clone());
        // The build and the topic come from one snapshot.
        assert!(
            served.contains(&version),
            "{payload}: {version:?} was never served together"
        );
        assert!(
            by_payload.insert(payload.clone(), version).is_none(),
            "{payload} was written twice"
        );
    }
    let missing: Vec<&String> = acked
        .iter()
        .filter(|p| !by_payload.contains_key(*p))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages are not in Kafka, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    for (probe, expected) in &probes {
        assert_eq!(by_payload.get(probe), Some(expected), "{probe}");
    }
    println!(
        "{} messages acknowledged and found in Kafka across {WRITES} edits ({} applied generations)",
        acked.len(),
        generation
    );
}
