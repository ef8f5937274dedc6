//! MQTT clients through the proxy and its example plugins into Kafka (librdkafka's mock cluster,
//! in-process): what arrives, with which key, headers and payload.

use std::time::Duration;

use barnabas_tests::mqtt::{Ack, mosquitto_pub, publish_v4, publish_v5};
use barnabas_tests::{TELEMETRY_ROUTES, TestProxy, read, simple_routes};
use bytes::Bytes;
use rdkafka::mocking::MockCluster;
use rumqttc::v5::mqttbytes::v5::PublishProperties;

const OK: Ack = Ack::Acked {
    code: 0,
    reason: None,
};
const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_plugin_chain_v4() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let t = TestProxy::start(&simple_routes(&bootstrap, TELEMETRY_ROUTES)).await;

    assert_eq!(
        publish_v4(
            t.mqtt,
            "dev1",
            "telemetry/acme/dev1",
            1,
            br#"{"temperature":42}"#
        )
        .await,
        OK
    );
    assert_eq!(
        publish_v4(
            t.mqtt,
            "dev2",
            "telemetry/acme/dev2",
            1,
            br#"{"temperature":95}"#
        )
        .await,
        OK
    );
    // Below `min`: dropped on purpose, still acknowledged.
    assert_eq!(
        publish_v4(
            t.mqtt,
            "dev3",
            "telemetry/acme/dev3",
            1,
            br#"{"temperature":-5}"#
        )
        .await,
        OK
    );

    let records = read(&bootstrap, "telemetry.acme", 3, Duration::from_secs(5)).await;
    assert_eq!(records.len(), 2, "{records:?}");
    let r = records
        .iter()
        .find(|r| r.key.as_deref() == Some(b"dev1"))
        .expect("dev1's record");
    assert_eq!(
        r.json(),
        serde_json::json!({"temperature": 42, "site": "plant-7", "line": 3})
    );
    assert_eq!(r.header("site").as_deref(), Some("plant-7"));
    assert_eq!(r.header("line").as_deref(), Some("3"));
    assert_eq!(
        r.header("mqtt.topic").as_deref(),
        Some("telemetry/acme/dev1")
    );
    assert_eq!(r.header("mqtt.qos").as_deref(), Some("1"));
    assert_eq!(r.header("mqtt.client-id").as_deref(), Some("dev1"));

    let alerts = read(&bootstrap, "alerts", 1, WAIT).await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].key.as_deref(), Some(&b"dev2"[..]));
    assert_eq!(alerts[0].json()["temperature"], 95);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_device_same_partition() {
    let kafka = MockCluster::new(1).unwrap();
    kafka.create_topic("by-device", 4, 1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let yaml = r#"
plugins:
  device-key: { wasm: "{plugin:device-key}", config: { level: 2 } }
routes:
  - name: r
    from: "mqtt:devices/+/data"
    plugins: [device-key]
    to: "kafka:by-device"
"#;
    let t = TestProxy::start(&simple_routes(&bootstrap, yaml)).await;
    for i in 0..6 {
        let device = if i % 2 == 0 { "a" } else { "b" };
        let topic = format!("devices/{device}/data");
        assert_eq!(
            publish_v4(t.mqtt, "c", &topic, 1, format!("{i}").as_bytes()).await,
            OK
        );
    }
    let records = read(&bootstrap, "by-device", 6, WAIT).await;
    assert_eq!(records.len(), 6);
    for device in [b"a", b"b"] {
        let parts: std::collections::HashSet<i32> = records
            .iter()
            .filter(|r| r.key.as_deref() == Some(&device[..]))
            .map(|r| r.partition)
            .collect();
        assert_eq!(parts.len(), 1, "one device's records on one partition");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_properties_become_kafka_headers() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let yaml = r#"
plugins:
  passthrough: { wasm: "{plugin:passthrough}" }
routes:
  - name: r
    from: "mqtt:cmd/#"
    plugins: [passthrough]
    to: "kafka:commands"
"#;
    let t = TestProxy::start(&simple_routes(&bootstrap, yaml)).await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        topic_alias: None,
        response_topic: Some("cmd/reply/7".into()),
        correlation_data: Some(Bytes::from_static(&[0, 1, 2, 255])),
        user_properties: vec![
            ("tenant".into(), "acme".into()),
            ("trace".into(), "t-1".into()),
        ],
        subscription_identifiers: vec![],
        content_type: Some("application/json".into()),
    };
    let ack = publish_v5(t.mqtt, "v5dev", "cmd/set", 1, b"{\"on\":true}", Some(props)).await;
    assert_eq!(ack, OK);
    let records = read(&bootstrap, "commands", 1, WAIT).await;
    let r = &records[0];
    assert_eq!(r.payload, b"{\"on\":true}");
    assert_eq!(r.key, None);
    assert_eq!(r.header("tenant").as_deref(), Some("acme"));
    assert_eq!(r.header("trace").as_deref(), Some("t-1"));
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(r.header("response-topic").as_deref(), Some("cmd/reply/7"));
    assert_eq!(r.header("message-expiry-interval").as_deref(), Some("60"));
    assert_eq!(r.header("payload-format-indicator").as_deref(), Some("1"));
    let corr = r
        .headers
        .iter()
        .find(|(n, _)| n == "correlation-data")
        .unwrap();
    assert_eq!(corr.1, vec![0, 1, 2, 255]);
    assert_eq!(r.header("mqtt.client-id").as_deref(), Some("v5dev"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_reason_codes() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let yaml = r#"
plugins:
  reject: { wasm: "{plugin:chaos}", config: { behaviour: reject, when_payload: no } }
  drop: { wasm: "{plugin:chaos}", config: { behaviour: drop, when_payload: skip } }
routes:
  - name: r
    from: "mqtt:in/#"
    plugins: [reject, drop]
    to: "kafka:in"
"#;
    let t = TestProxy::start(&simple_routes(&bootstrap, yaml)).await;
    assert_eq!(publish_v5(t.mqtt, "a", "in/x", 1, b"yes", None).await, OK);
    match publish_v5(t.mqtt, "a", "in/x", 1, b"no", None).await {
        Ack::Acked {
            code: 0x83,
            reason: Some(r),
        } => assert!(r.contains("rejected on purpose"), "{r}"),
        other => panic!("expected 0x83, got {other:?}"),
    }
    match publish_v5(t.mqtt, "a", "in/x", 1, b"skip", None).await {
        Ack::Acked {
            code: 0x10,
            reason: Some(r),
        } => assert!(r.contains("dropped on purpose"), "{r}"),
        other => panic!("expected 0x10, got {other:?}"),
    }
    match publish_v5(t.mqtt, "a", "elsewhere", 1, b"x", None).await {
        Ack::Acked {
            code: 0x90,
            reason: Some(r),
        } => assert!(r.contains("no route"), "{r}"),
        other => panic!("expected 0x90, got {other:?}"),
    }
    // QoS 2 reports through PUBREC.
    match publish_v5(t.mqtt, "a", "in/x", 2, b"no", None).await {
        Ack::Acked { code: 0x83, .. } => {}
        other => panic!("expected PUBREC 0x83, got {other:?}"),
    }
    // A payload marked UTF-8 that is not.
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    match publish_v5(t.mqtt, "a", "in/x", 1, &[0xff, 0xfe], Some(props)).await {
        Ack::Acked { code: 0x99, .. } => {}
        other => panic!("expected 0x99, got {other:?}"),
    }
    let records = read(&bootstrap, "in", 2, Duration::from_secs(3)).await;
    assert_eq!(records.len(), 1, "only the accepted message is in Kafka");
    assert_eq!(records[0].payload, b"yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let t = TestProxy::start(&simple_routes(&bootstrap, TELEMETRY_ROUTES)).await;
    for (version, qos) in [
        ("mqttv311", "1"),
        ("mqttv5", "1"),
        ("mqttv5", "2"),
        ("mqttv311", "0"),
    ] {
        let payload = format!("{{\"temperature\":50,\"via\":\"{version}-{qos}\"}}");
        let (ok, out) = mosquitto_pub(
            t.mqtt,
            &[
                "-V",
                version,
                "-q",
                qos,
                "-i",
                "mosq",
                "-t",
                "telemetry/plant/m1",
                "-m",
                &payload,
            ],
        )
        .await;
        assert!(ok, "mosquitto_pub {version} q{qos}: {out}");
    }
    let records = read(&bootstrap, "telemetry.plant", 4, WAIT).await;
    let mut via: Vec<String> = records
        .iter()
        .map(|r| r.json()["via"].as_str().unwrap().to_string())
        .collect();
    via.sort();
    assert_eq!(via, ["mqttv311-0", "mqttv311-1", "mqttv5-1", "mqttv5-2"]);
    assert!(records.iter().all(|r| r.key.as_deref() == Some(b"m1")));

    // mosquitto_pub -d shows the reason code of a refused publish.
    let (_, out) = mosquitto_pub(
        t.mqtt,
        &["-V", "mqttv5", "-q", "1", "-d", "-t", "nowhere", "-m", "x"],
    )
    .await;
    assert!(
        out.contains("Topic Name invalid") || out.contains("RC:144"),
        "{out}"
    );

    // A subscription is granted, and receives only what a route delivers to `mqtt:`: these
    // routes deliver to Kafka, so the publishes above do not come back to it.
    let out = tokio::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            &t.mqtt.ip().to_string(),
            "-p",
            &t.mqtt.port().to_string(),
        ])
        .args([
            "-V",
            "mqttv5",
            "-d",
            "-t",
            "telemetry/#",
            "-C",
            "1",
            "-W",
            "2",
        ])
        .output()
        .await
        .expect("mosquitto_sub is not installed: run `make setup`");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("received SUBACK") && text.contains("Timed out") && !text.contains("PUBLISH"),
        "granted, and nothing delivered: {text}"
    );
}

/// `barnabas run --workers 1` serves on the one worker thread it is given: a client's message is
/// acknowledged once Kafka has it. A count of 0 is refused before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_runs_on_the_workers_it_is_given() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let port = barnabas_bench::peers::free_low_port();
    let listen = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    let routes = simple_routes(
        &bootstrap,
        "routes:\n  - { name: r, from: \"mqtt:#\", to: \"kafka:out\" }\n",
    )
    .replace("127.0.0.1:0", &listen);
    std::fs::write(&config, routes).unwrap();
    let binary = barnabas_tests::proxy_binary();

    let refused = std::process::Command::new(&binary)
        .args(["run", "--workers", "0", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(text.contains("--workers"), "{text}");

    let _proxy =
        barnabas_bench::peers::barnabas_with(&binary, &config, &listen, &["--workers", "1"])
            .unwrap();
    let addr = listen.parse().unwrap();
    for i in 0..3 {
        let payload = format!("m{i}");
        assert_eq!(
            publish_v5(addr, "one", "t/1", 1, payload.as_bytes(), None).await,
            OK
        );
    }
    let records = read(&bootstrap, "out", 3, WAIT).await;
    assert_eq!(records.len(), 3, "{records:?}");
}
