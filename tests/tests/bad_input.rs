//! Bad input closes only the offending connection, with the right reason; other clients keep
//! working.

use std::time::Duration;

use barnabas_tests::mqtt::{Ack, Raw, publish_v5, publish4, publish5};
use barnabas_tests::{TestProxy, read, simple_routes};
use rdkafka::mocking::MockCluster;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

const PASS: &str = r#"
routes:
  - name: r
    from: "mqtt:#"
    to: "kafka:ok"
"#;

struct Setup {
    _kafka: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    bootstrap: String,
    t: TestProxy,
    /// A well-behaved client connected before the bad one, which must keep working.
    bystander: Raw,
}

async fn setup(extra: &str) -> Setup {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let config = simple_routes(&bootstrap, PASS).replace(
        "bind: \"127.0.0.1:0\"",
        &format!("bind: \"127.0.0.1:0\"{extra}"),
    );
    let t = TestProxy::start(&config).await;
    let bystander = Raw::session(t.mqtt, true, "bystander").await;
    Setup {
        _kafka: kafka,
        bootstrap,
        t,
        bystander,
    }
}

impl Setup {
    /// The bystander still publishes and is acknowledged, and a new client still connects.
    async fn others_keep_working(&mut self, n: u16) {
        self.bystander
            .send_v5(publish5("fine", 1, n, b"still here", None))
            .await;
        match self.bystander.recv_v5().await {
            Some(v5::Packet::PubAck(a)) => {
                assert_eq!((a.pkid, a.reason), (n, v5::PubAckReason::Success))
            }
            other => panic!("bystander got {other:?}"),
        }
        assert_eq!(
            publish_v5(self.t.mqtt, "newcomer", "fine", 1, b"new", None).await,
            Ack::Acked {
                code: 0,
                reason: None
            }
        );
    }
}

async fn expect_disconnect(raw: &mut Raw, code: v5::DisconnectReasonCode) {
    match raw.recv_v5().await {
        Some(v5::Packet::Disconnect(d)) => assert_eq!(d.reason_code, code, "{d:?}"),
        other => panic!("expected DISCONNECT {code:?}, got {other:?}"),
    }
    assert!(raw.closed().await, "connection closed after DISCONNECT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes() {
    let mut s = setup("").await;
    let mut raw = Raw::connect(s.t.mqtt, false).await;
    raw.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        raw.read_to_close().await.is_empty(),
        "closed without an answer"
    );
    // Garbage after a good CONNECT: v5 says malformed packet.
    let mut raw = Raw::session(s.t.mqtt, true, "garbage").await;
    raw.write(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).await;
    expect_disconnect(&mut raw, v5::DisconnectReasonCode::MalformedPacket).await;
    s.others_keep_working(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_packet() {
    let mut s = setup(", max_packet_size: 1024").await;
    let mut raw = Raw::session(s.t.mqtt, true, "big").await;
    raw.send_v5(publish5("big", 1, 1, &vec![b'x'; 4096], None))
        .await;
    expect_disconnect(&mut raw, v5::DisconnectReasonCode::PacketTooLarge).await;
    let mut raw = Raw::session(s.t.mqtt, false, "big4").await;
    raw.send_v4(publish4("big", 1, 1, &vec![b'x'; 4096])).await;
    assert!(raw.closed().await);
    s.others_keep_working(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_topic() {
    let mut s = setup("").await;
    let mut raw = Raw::session(s.t.mqtt, true, "wild").await;
    raw.send_v5(publish5("a/+/b", 1, 1, b"x", None)).await;
    expect_disconnect(&mut raw, v5::DisconnectReasonCode::TopicNameInvalid).await;
    let mut raw = Raw::session(s.t.mqtt, false, "wild4").await;
    raw.send_v4(publish4("a/#", 0, 0, b"x")).await;
    assert!(raw.closed().await);
    s.others_keep_working(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_topic() {
    let mut s = setup("").await;
    let mut raw = Raw::session(s.t.mqtt, true, "utf8").await;
    // PUBLISH QoS 0, topic of 2 bytes that are not UTF-8, payload "x".
    raw.write(&[0x30, 0x05, 0x00, 0x02, 0xc3, 0x28, b'x']).await;
    expect_disconnect(&mut raw, v5::DisconnectReasonCode::MalformedPacket).await;
    let mut raw = Raw::session(s.t.mqtt, false, "utf8-4").await;
    raw.write(&[0x30, 0x05, 0x00, 0x02, 0xc3, 0x28, b'x']).await;
    assert!(raw.closed().await);
    s.others_keep_working(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_protocol_level() {
    let mut s = setup("").await;
    let mut connect = bytes::BytesMut::new();
    v4::Packet::Connect(v4::Connect::new("old"))
        .write(&mut connect, usize::MAX)
        .unwrap();
    connect[8] = 3; // MQTT 3.1's level under the 3.1.1 name
    let mut raw = Raw::connect(s.t.mqtt, false).await;
    raw.write(&connect).await;
    // CONNACK with return code 0x01, unacceptable protocol version, then close.
    assert_eq!(raw.read_to_close().await, vec![0x20, 0x02, 0x00, 0x01]);
    s.others_keep_working(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connect() {
    let mut s = setup("").await;
    let mut raw = Raw::session(s.t.mqtt, true, "twice").await;
    raw.send_v5(v5::Packet::Connect(
        v5::Connect {
            keep_alive: 30,
            client_id: "twice".into(),
            clean_start: true,
            properties: None,
        },
        None,
        None,
    ))
    .await;
    expect_disconnect(&mut raw, v5::DisconnectReasonCode::ProtocolError).await;
    let mut raw = Raw::session(s.t.mqtt, false, "twice4").await;
    raw.send_v4(v4::Packet::Connect(v4::Connect::new("twice4")))
        .await;
    assert!(raw.closed().await);
    s.others_keep_working(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_is_enforced_and_takeover_closes_the_old_connection() {
    let mut s = setup("").await;
    let mut raw = Raw::connect(s.t.mqtt, true).await;
    raw.send_v5(v5::Packet::Connect(
        v5::Connect {
            keep_alive: 1,
            client_id: "sleepy".into(),
            clean_start: true,
            properties: None,
        },
        None,
        None,
    ))
    .await;
    assert!(matches!(raw.recv_v5().await, Some(v5::Packet::ConnAck(_))));
    let started = std::time::Instant::now();
    expect_disconnect(&mut raw, v5::DisconnectReasonCode::KeepAliveTimeout).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    let mut first = Raw::session(s.t.mqtt, true, "same-id").await;
    let _second = Raw::session(s.t.mqtt, true, "same-id").await;
    expect_disconnect(&mut first, v5::DisconnectReasonCode::SessionTakenOver).await;
    s.others_keep_working(1).await;
    let records = read(&s.bootstrap, "ok", 2, Duration::from_secs(10)).await;
    assert_eq!(records.len(), 2);
}
