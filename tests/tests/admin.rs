//! The admin endpoint, read by an HTTP client: /healthz, /readyz, /status and /metrics (parsed
//! with a Prometheus text-format parser) say what the proxy did.

use std::time::{Duration, Instant};

use barnabas::reload::ReloadOutcome;
use barnabas_tests::mqtt::{Ack, Raw, publish_v5};
use barnabas_tests::{Metrics, TELEMETRY_ROUTES, TestProxy, http_get, scrape, simple_routes};
use rdkafka::mocking::MockCluster;
use sha2::{Digest, Sha256};

const ADMIN: &str = "admin: { bind: \"127.0.0.1:0\" }\n";

fn is_acked(ack: &Ack) -> bool {
    matches!(ack, Ack::Acked { code: 0, .. })
}

/// Scrapes until `check` holds (connection counts settle as sockets close), or panics.
async fn scrape_until(addr: std::net::SocketAddr, check: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = scrape(addr).await;
        if check(&m) || Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let yaml = simple_routes(&bootstrap, TELEMETRY_ROUTES) + ADMIN;
    let t = TestProxy::start(&yaml).await;
    let admin = t.proxy.admin_addr().expect("admin endpoint");

    assert_eq!(http_get(admin, "/healthz").await, (200, "ok\n".into()));

    // Three ordinary readings, one hot (forwarded and copied to alerts), one cold (dropped), one
    // that is not JSON (enrich fails: rejected), and one no route takes.
    for i in 0..3 {
        let ack = publish_v5(
            t.mqtt,
            "d1",
            "telemetry/acme/d1",
            1,
            format!("{{\"temperature\":{i}}}").as_bytes(),
            None,
        )
        .await;
        assert!(is_acked(&ack), "{ack:?}");
    }
    let hot = publish_v5(
        t.mqtt,
        "d1",
        "telemetry/acme/d1",
        1,
        b"{\"temperature\":90}",
        None,
    )
    .await;
    assert!(is_acked(&hot), "{hot:?}");
    let cold = publish_v5(
        t.mqtt,
        "d1",
        "telemetry/acme/d1",
        1,
        b"{\"temperature\":-5}",
        None,
    )
    .await;
    assert!(matches!(cold, Ack::Acked { code: 0x10, .. }), "{cold:?}");
    let bad = publish_v5(t.mqtt, "d1", "telemetry/acme/d1", 1, b"not json", None).await;
    assert!(matches!(bad, Ack::Acked { code: 0x80, .. }), "{bad:?}");
    let lost = publish_v5(t.mqtt, "d1", "elsewhere/x", 1, b"{}", None).await;
    assert!(matches!(lost, Ack::Acked { code: 0x90, .. }), "{lost:?}");

    // One client stays connected while the others have gone.
    let _open = Raw::session(t.mqtt, true, "stays").await;
    let m = scrape_until(admin, |m| {
        m.value("barnabas_open_connections", &[("listener", "mqtt")]) == 1.0
    })
    .await;

    let route = [("route", "telemetry")];
    assert_eq!(m.value("barnabas_messages_in_total", &route), 6.0);
    // Three ordinary records, and the hot reading twice (its topic and alerts).
    assert_eq!(m.value("barnabas_messages_out_total", &route), 5.0);
    assert_eq!(m.value("barnabas_messages_dropped_total", &route), 1.0);
    assert_eq!(m.value("barnabas_messages_rejected_total", &route), 1.0);
    assert_eq!(m.value("barnabas_messages_failed_total", &route), 0.0);
    let unmatched = [("route", "(unmatched)")];
    assert_eq!(m.value("barnabas_messages_in_total", &unmatched), 1.0);
    assert_eq!(m.value("barnabas_messages_rejected_total", &unmatched), 1.0);

    // enrich sees all six and fails on the one that is not JSON; threshold sees the other five;
    // device-key the five records threshold forwarded.
    let calls = "barnabas_plugin_call_duration_seconds_count";
    assert_eq!(m.value(calls, &[("plugin", "enrich")]), 6.0);
    assert_eq!(m.value(calls, &[("plugin", "threshold")]), 5.0);
    assert_eq!(m.value(calls, &[("plugin", "device-key")]), 5.0);
    assert_eq!(
        m.value("barnabas_plugin_failures_total", &[("plugin", "enrich")]),
        1.0
    );
    assert!(
        m.value(
            "barnabas_plugin_call_duration_seconds_sum",
            &[("plugin", "enrich")]
        ) > 0.0
    );
    let acks = "barnabas_destination_ack_duration_seconds_count";
    assert_eq!(m.value(acks, &[("destination", "kafka")]), 5.0);
    assert_eq!(
        m.value("barnabas_open_connections", &[("listener", "mqtt")]),
        1.0
    );
    assert_eq!(m.value("barnabas_snapshot_generation", &[]), 1.0);

    // The histograms carry buckets that a Prometheus server can compute quantiles from.
    let histogram =
        m.0.samples
            .iter()
            .find(|s| {
                s.metric == "barnabas_plugin_call_duration_seconds"
                    && s.labels.get("plugin") == Some("enrich")
            })
            .expect("enrich's call histogram");
    match &histogram.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let last = buckets.last().expect("buckets");
            assert!(last.less_than.is_infinite());
            assert_eq!(last.count, 6.0);
        }
        other => panic!("not a histogram: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_reload_outcomes() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let yaml = simple_routes(&bootstrap, TELEMETRY_ROUTES) + ADMIN;
    let t = TestProxy::start(&yaml).await;
    let admin = t.proxy.admin_addr().expect("admin endpoint");

    let (code, body) = http_get(admin, "/readyz").await;
    assert_eq!(code, 200, "{body}");

    let (code, body) = http_get(admin, "/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["generation"], 1);
    assert_eq!(status["listeners"]["mqtt"], t.mqtt.to_string());
    assert!(status["last_reload"].is_null());
    let plugins = status["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 3);
    for p in plugins {
        let wasm = p["wasm"].as_str().unwrap();
        let digest = Sha256::digest(std::fs::read(wasm).unwrap());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(p["sha256"], hex, "{p}");
    }
    let route = &status["routes"][0];
    assert_eq!(route["name"], "telemetry");
    assert_eq!(route["from"], "mqtt:telemetry/+/+");
    assert_eq!(
        route["plugins"],
        serde_json::json!(["enrich", "threshold", "device-key"])
    );
    assert_eq!(route["to"], "kafka:telemetry.{2}");
    assert_eq!(route["outputs"]["alerts"], "kafka:alerts");
    assert_eq!(route["on_error"], "reject");
    let destination = &status["destinations"][0];
    assert_eq!(destination["name"], "kafka");
    assert_eq!(destination["kind"], "kafka");
    assert_eq!(destination["state"], "reachable", "{destination}");

    // A typo: the route names a destination that does not exist. Rejected whole, located, shown.
    let typo = yaml.replace("to: \"kafka:telemetry.{2}\"", "to: \"kafak:telemetry.{2}\"");
    let line = typo.lines().position(|l| l.contains("kafak:")).unwrap() + 1;
    std::fs::write(&t.path, &typo).unwrap();
    assert!(matches!(t.proxy.reload().await, ReloadOutcome::Rejected(_)));
    let (_, body) = http_get(admin, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["generation"], 1, "the old snapshot keeps serving");
    let last = &status["last_reload"];
    assert_eq!(last["result"], "rejected", "{last}");
    let errors = last["errors"].as_array().unwrap();
    let at = format!("{}:{line}:", t.path.display());
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().starts_with(&at) && e.as_str().unwrap().contains("kafak")),
        "no error at {at} in {errors:?}"
    );

    // Fixed: applied, and /status and /metrics say so.
    std::fs::write(&t.path, &yaml).unwrap();
    let generation = match t.proxy.reload().await {
        ReloadOutcome::Applied { generation } => generation,
        other => panic!("expected applied, got {other:?}"),
    };
    let (_, body) = http_get(admin, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["generation"], generation);
    assert_eq!(status["last_reload"]["result"], "applied");
    assert_eq!(status["last_reload"]["generation"], generation);
    let m = scrape(admin).await;
    assert!(m.value("barnabas_reloads_total", &[("result", "rejected")]) >= 1.0);
    assert!(m.value("barnabas_reloads_total", &[("result", "applied")]) >= 1.0);
    assert_eq!(
        m.value("barnabas_snapshot_generation", &[]),
        generation as f64
    );
}

/// A proxy with the admin endpoint whose Kafka is on a port nothing listens on (a listener that
/// was bound and closed again).
async fn proxy_with_unreachable_kafka() -> TestProxy {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = simple_routes(&format!("127.0.0.1:{port}"), TELEMETRY_ROUTES) + ADMIN;
    TestProxy::start(&yaml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_a_destination_is_unreachable() {
    let t = proxy_with_unreachable_kafka().await;
    let admin = t.proxy.admin_addr().expect("admin endpoint");

    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    let (code, body) = http_get(admin, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["unreachable"][0]["destination"], "kafka");
    let (_, body) = http_get(admin, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["destinations"][0]["state"], "unreachable");
}

/// `shutdown(grace)` returns within its grace even while an admin request is still waiting on a
/// broker probe (2 s against an unreachable cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keeps_to_its_grace_while_an_admin_request_is_busy() {
    let t = proxy_with_unreachable_kafka().await;
    let admin = t.proxy.admin_addr().expect("admin endpoint");
    let busy = tokio::spawn(async move { http_get(admin, "/readyz").await });
    // The request is in the probe by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    t.proxy.shutdown(Duration::from_millis(200)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1200),
        "shutdown took {took:?} with a grace of 200 ms"
    );
    busy.abort();
}
