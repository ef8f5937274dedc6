//! End to end against a Kafka-API broker in its own process (tansu), the way the proxy runs in
//! front of an existing cluster: rumqttc and mosquitto_pub in, an rdkafka consumer out.

use std::time::Duration;

use barnabas_tests::mqtt::{Ack, mosquitto_pub, publish_v4, publish_v5};
use barnabas_tests::{TELEMETRY_ROUTES, Tansu, TestProxy, read, simple_routes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_through_plugins_into_tansu() {
    let tansu = Tansu::start();
    tansu.create_topic("telemetry.acme", 3);
    tansu.create_topic("alerts", 1);
    let t = TestProxy::start(&simple_routes(&tansu.bootstrap, TELEMETRY_ROUTES)).await;

    let ok = Ack::Acked {
        code: 0,
        reason: None,
    };
    assert_eq!(
        publish_v4(
            t.mqtt,
            "d1",
            "telemetry/acme/dev1",
            1,
            br#"{"temperature":42}"#
        )
        .await,
        ok
    );
    assert_eq!(
        publish_v5(
            t.mqtt,
            "d2",
            "telemetry/acme/dev2",
            2,
            br#"{"temperature":85}"#,
            None
        )
        .await,
        ok
    );
    let (success, out) = mosquitto_pub(
        t.mqtt,
        &[
            "-q",
            "1",
            "-i",
            "d3",
            "-t",
            "telemetry/acme/dev3",
            "-m",
            r#"{"temperature":7}"#,
        ],
    )
    .await;
    assert!(success, "{out}");

    let records = read(
        &tansu.bootstrap,
        "telemetry.acme",
        3,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(records.len(), 3, "{records:?}");
    for (device, temperature) in [("dev1", 42), ("dev2", 85), ("dev3", 7)] {
        let r = records
            .iter()
            .find(|r| r.key.as_deref() == Some(device.as_bytes()))
            .unwrap_or_else(|| panic!("no record keyed {device}"));
        assert_eq!(
            r.json(),
            serde_json::json!({"temperature": temperature, "site": "plant-7", "line": 3})
        );
        assert_eq!(r.header("site").as_deref(), Some("plant-7"));
        assert_eq!(
            r.header("mqtt.topic").as_deref(),
            Some(&*format!("telemetry/acme/{device}"))
        );
    }
    let alerts = read(&tansu.bootstrap, "alerts", 1, Duration::from_secs(20)).await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].key.as_deref(), Some(&b"dev2"[..]));
}
