//! Plugins that loop, hoard memory, trap or fail: the message follows the route's `on_error`, the
//! proxy keeps serving, and the next message on the route works. Printing is harmless.

use std::time::{Duration, Instant};

use barnabas_tests::mqtt::{Ack, publish_v5};
use barnabas_tests::{TestProxy, read, simple_routes};
use rdkafka::mocking::MockCluster;

fn routes(behaviour: &str, on_error: &str) -> String {
    format!(
        r#"
plugins:
  chaos: {{ wasm: "{{plugin:chaos}}", config: {{ behaviour: {behaviour}, when_payload: boom }}, timeout_ms: 20, memory_mb: 8 }}
  passthrough: {{ wasm: "{{plugin:passthrough}}" }}
routes:
  - name: r
    from: "mqtt:in/#"
    plugins: [chaos, passthrough]
    to: "kafka:out"
    on_error: {on_error}
"#
    )
}

const OK: Ack = Ack::Acked {
    code: 0,
    reason: None,
};

async fn check(behaviour: &str, expect_reason: &str) {
    // on_error: reject — the client hears 0x80 with the cause, the next message goes through.
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let t = TestProxy::start(&simple_routes(&bootstrap, &routes(behaviour, "reject"))).await;
    let started = Instant::now();
    match publish_v5(t.mqtt, "h", "in/x", 1, b"boom", None).await {
        Ack::Acked {
            code: 0x80,
            reason: Some(r),
        } => assert!(r.contains(expect_reason), "{behaviour}: {r}"),
        other => panic!("{behaviour}: expected 0x80, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{behaviour} was not stopped in time"
    );
    for i in 0..3 {
        assert_eq!(
            publish_v5(t.mqtt, "h", "in/x", 1, format!("fine-{i}").as_bytes(), None).await,
            OK,
            "{behaviour}"
        );
    }
    let records = read(&bootstrap, "out", 3, Duration::from_secs(10)).await;
    assert_eq!(records.len(), 3);

    // on_error: pass — the failing plugin is skipped, the message is delivered as it was.
    let t = TestProxy::start(
        &simple_routes(&bootstrap, &routes(behaviour, "pass")).replace("kafka:out", "kafka:passed"),
    )
    .await;
    assert_eq!(publish_v5(t.mqtt, "h", "in/x", 1, b"boom", None).await, OK);
    let records = read(&bootstrap, "passed", 1, Duration::from_secs(10)).await;
    assert_eq!(records[0].payload, b"boom");

    // on_error: dead-letter — the message as it arrived goes to the dead-letter topic, with why.
    let t = TestProxy::start(&simple_routes(
        &bootstrap,
        &routes(behaviour, "\"dead-letter:kafka:dlq\""),
    ))
    .await;
    assert_eq!(
        publish_v5(t.mqtt, "h", "in/dead", 1, b"boom", None).await,
        OK
    );
    let dlq = read(&bootstrap, "dlq", 10, Duration::from_secs(5)).await;
    let r = dlq
        .iter()
        .find(|r| r.header("mqtt.topic").as_deref() == Some("in/dead"))
        .expect("dead-lettered");
    assert_eq!(r.payload, b"boom");
    assert!(
        r.header("dead-letter-reason")
            .unwrap()
            .contains(expect_reason)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_times_out() {
    check("loop", "timed out").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_hits_the_cap() {
    check("oom", "memory limit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap() {
    check("trap", "trapped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_error() {
    check("error", "error on purpose").await;
}

/// A plugin that prints to stdout and stderr is served like any other: its output is discarded
/// (the SDK sends panic messages to the log through the `log` import).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printing_is_harmless() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let t = TestProxy::start(&simple_routes(&bootstrap, &routes("print", "reject"))).await;
    for i in 0..3 {
        assert_eq!(
            publish_v5(t.mqtt, "h", "in/x", 1, b"boom", None).await,
            OK,
            "print {i}"
        );
    }
    let records = read(&bootstrap, "out", 3, Duration::from_secs(10)).await;
    assert_eq!(records.len(), 3);
}

/// A plugin that sleeps burns no CPU, so its CPU deadline never comes: the wall-clock bound
/// (10 × `timeout_ms`, at least 1 s) stops it, and only its message is affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_plugin_hits_the_wall_clock_bound() {
    check("sleep", "did not return within").await;
}

/// 64 outputs that all point at one 1 MiB buffer in the guest would be 64 MiB on the host: the
/// result is refused while it is copied out, at `memory_mb` (8 MiB here) in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_flood_is_refused_while_copied() {
    check("flood", "returned more than 8 MiB").await;
}

/// A plugin whose `init` sleeps fails its load within the wall-clock bound: `check`, a start and
/// a reload report it instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_init_fails_the_load_in_time() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let yaml = simple_routes(
        &bootstrap,
        r#"
plugins:
  sleepy: { wasm: "{plugin:chaos}", config: { behaviour: none, sleep_init: true }, timeout_ms: 20 }
routes:
  - { name: r, from: "mqtt:in/#", plugins: [sleepy], to: "kafka:out" }
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let config = barnabas::Config::load(&path).unwrap();
    let started = Instant::now();
    let engine = barnabas::plugin::PluginEngine::new().unwrap();
    let error = barnabas::pipeline::load_plugins(&config, &engine, None, &config.source_files())
        .expect_err("a plugin whose init never returns cannot load");
    assert!(
        error.to_string().contains("did not return within 1s"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // A reload to it is rejected in time, and the old routes keep serving.
    let t = TestProxy::start(&simple_routes(&bootstrap, &routes("none", "reject"))).await;
    std::fs::write(&t.path, &yaml).unwrap();
    let started = Instant::now();
    let outcome = t.proxy.reload().await;
    assert!(
        matches!(&outcome, barnabas::reload::ReloadOutcome::Rejected(e) if e.contains("did not return")),
        "{outcome:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(publish_v5(t.mqtt, "h", "in/x", 1, b"fine", None).await, OK);
}
