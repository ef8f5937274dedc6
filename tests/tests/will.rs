//! Last Will messages: published through the routes when a connection ends without a normal
//! DISCONNECT, not published after one.

use std::time::Duration;

use barnabas_tests::mqtt::Raw;
use barnabas_tests::{TestProxy, read, simple_routes};
use bytes::Bytes;
use rdkafka::mocking::MockCluster;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

const ROUTES: &str = r#"
routes:
  - name: status
    from: "mqtt:status/+"
    to: "kafka:status"
"#;

/// A v5 CONNECT with a will on `status/CLIENT`. With a `delay`, the session outlives the
/// connection by `session_expiry` seconds (0: it ends with the connection, and so does the delay).
fn connect_v5(
    client_id: &str,
    will_payload: &str,
    delay: Option<u32>,
    session_expiry: u32,
) -> v5::Packet {
    let props = v5::LastWillProperties {
        delay_interval: delay,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: Some("text/plain".into()),
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
    };
    let will = v5::LastWill::new(
        format!("status/{client_id}"),
        Bytes::from(will_payload.to_string()),
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        Some(props),
    );
    v5::Packet::Connect(
        v5::Connect {
            keep_alive: 30,
            client_id: client_id.into(),
            clean_start: true,
            properties: Some(v5::ConnectProperties {
                session_expiry_interval: Some(session_expiry),
                ..v5::ConnectProperties::new()
            }),
        },
        Some(will),
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_published_on_abnormal_close_only() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let t = TestProxy::start(&simple_routes(&bootstrap, ROUTES)).await;

    // 3.1.1: the TCP connection just drops.
    let mut raw = Raw::connect(t.mqtt, false).await;
    let mut connect = v4::Connect::new("gone4");
    connect.last_will = Some(v4::LastWill::new(
        "status/gone4",
        "offline-4",
        rumqttc::mqttbytes::QoS::AtLeastOnce,
        false,
    ));
    raw.send_v4(v4::Packet::Connect(connect)).await;
    assert!(matches!(raw.recv_v4().await, Some(v4::Packet::ConnAck(_))));
    drop(raw);

    // 5, normal DISCONNECT: no will.
    let mut raw = Raw::connect(t.mqtt, true).await;
    raw.send_v5(connect_v5("polite", "offline-polite", None, 0))
        .await;
    assert!(matches!(raw.recv_v5().await, Some(v5::Packet::ConnAck(_))));
    raw.send_v5(v5::Packet::Disconnect(v5::Disconnect::new(
        v5::DisconnectReasonCode::NormalDisconnection,
    )))
    .await;
    assert!(raw.closed().await);

    // 5, DISCONNECT with reason 0x04: the will, on request.
    let mut raw = Raw::connect(t.mqtt, true).await;
    raw.send_v5(connect_v5("asks", "offline-asks", None, 0))
        .await;
    assert!(matches!(raw.recv_v5().await, Some(v5::Packet::ConnAck(_))));
    raw.send_v5(v5::Packet::Disconnect(v5::Disconnect::new(
        v5::DisconnectReasonCode::DisconnectWithWillMessage,
    )))
    .await;
    assert!(raw.closed().await);

    // 5 with a will delay, back before it ends: no will.
    let mut raw = Raw::connect(t.mqtt, true).await;
    raw.send_v5(connect_v5("back", "offline-back", Some(2), 60))
        .await;
    assert!(matches!(raw.recv_v5().await, Some(v5::Packet::ConnAck(_))));
    drop(raw);
    let _again = Raw::session(t.mqtt, true, "back").await;

    // 5 with a will delay longer than the session: the session ends with the connection, and the
    // will is published then [MQTT-3.1.3-9], although the client comes back within the delay.
    let mut raw = Raw::connect(t.mqtt, true).await;
    raw.send_v5(connect_v5("short", "offline-short", Some(60), 0))
        .await;
    assert!(matches!(raw.recv_v5().await, Some(v5::Packet::ConnAck(_))));
    drop(raw);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _short_again = Raw::session(t.mqtt, true, "short").await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    let records = read(&bootstrap, "status", 10, Duration::from_secs(5)).await;
    let mut payloads: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    payloads.sort();
    assert_eq!(payloads, ["offline-4", "offline-asks", "offline-short"]);
    let r = records
        .iter()
        .find(|r| r.payload == b"offline-asks")
        .unwrap();
    assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(r.header("mqtt.client-id").as_deref(), Some("asks"));
}

/// A will that Kafka cannot take for now is tried again until it can: nobody is left to resend it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_retried_while_kafka_is_away() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let config = simple_routes(&bootstrap, ROUTES)
        .replace("message.timeout.ms: 5000", "message.timeout.ms: 1500");
    let t = TestProxy::start(&config).await;
    // The producer knows the cluster before it goes away.
    let mut warm = Raw::connect(t.mqtt, true).await;
    warm.send_v5(connect_v5("warm", "offline-warm", None, 0))
        .await;
    assert!(matches!(warm.recv_v5().await, Some(v5::Packet::ConnAck(_))));
    drop(warm);
    assert_eq!(
        read(&bootstrap, "status", 1, Duration::from_secs(10))
            .await
            .len(),
        1
    );

    kafka.broker_down(1).unwrap();
    let mut raw = Raw::connect(t.mqtt, true).await;
    raw.send_v5(connect_v5("unlucky", "offline-unlucky", None, 0))
        .await;
    assert!(matches!(raw.recv_v5().await, Some(v5::Packet::ConnAck(_))));
    drop(raw);
    // At least one delivery attempt fails while the broker is down.
    tokio::time::sleep(Duration::from_secs(3)).await;
    kafka.broker_up(1).unwrap();

    let records = read(&bootstrap, "status", 2, Duration::from_secs(30)).await;
    assert!(
        records.iter().any(|r| r.payload == b"offline-unlucky"),
        "the will arrived once Kafka was back"
    );
}
