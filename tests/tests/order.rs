//! Per-connection order into Kafka: one connection's records bound for one partition land in
//! PUBLISH order, whatever the length of the plugin chain each one runs through and across a
//! reload, while their deliveries are awaited together.

use std::time::Duration;

use barnabas::reload::ReloadOutcome;
use barnabas_tests::mqtt::{Raw, publish4};
use barnabas_tests::{TestProxy, read, simple_routes};
use rdkafka::mocking::MockCluster;
use rumqttc::mqttbytes::v4;

const ROUTES: &str = r#"
plugins:
  chaos: { wasm: "{plugin:chaos}", config: { behaviour: none } }
  passthrough: { wasm: "{plugin:passthrough}" }
routes:
  - name: long
    from: "mqtt:ord/long/#"
    plugins: [chaos, passthrough, passthrough, passthrough]
    to: "kafka:ordered"
  - name: short
    from: "mqtt:ord/short/#"
    to: "kafka:ordered"
"#;

const MESSAGES: u16 = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_lands_in_publish_order() {
    let kafka = MockCluster::new(1).unwrap();
    kafka.create_topic("ordered", 1, 1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let t = TestProxy::start(&simple_routes(&bootstrap, ROUTES)).await;

    let mut raw = Raw::session(t.mqtt, false, "orderly").await;
    // Every PUBLISH is written before any PUBACK is read: the proxy has up to its receive maximum
    // of them under way at once. Even ones take four plugins, odd ones none.
    for i in 1..=MESSAGES {
        let topic = if i % 2 == 0 {
            "ord/long/x"
        } else {
            "ord/short/x"
        };
        raw.send_v4(publish4(topic, 1, i, i.to_string().as_bytes()))
            .await;
        if i == MESSAGES / 2 {
            // A reload swaps the snapshot in the middle of the burst.
            assert!(matches!(
                t.proxy.reload().await,
                ReloadOutcome::Applied { .. }
            ));
        }
    }
    for i in 1..=MESSAGES {
        match raw.recv_v4().await {
            Some(v4::Packet::PubAck(ack)) => assert_eq!(ack.pkid, i, "acks in PUBLISH order"),
            other => panic!("PUBACK {i}: got {other:?}"),
        }
    }

    let records = read(
        &bootstrap,
        "ordered",
        MESSAGES as usize,
        Duration::from_secs(30),
    )
    .await;
    let got: Vec<u16> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).parse().unwrap())
        .collect();
    let want: Vec<u16> = (1..=MESSAGES).collect();
    assert_eq!(got.len(), want.len(), "every record once");
    if let Some(at) = got.iter().zip(&want).position(|(g, w)| g != w) {
        panic!(
            "out of PUBLISH order at offset {at}: {:?}",
            &got[at.saturating_sub(3)..(at + 3).min(got.len())]
        );
    }
}
