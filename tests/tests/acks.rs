//! The core promise: a client is acknowledged only after Kafka has committed its message, and a
//! message Kafka did not take is never acknowledged as delivered.

use std::time::{Duration, Instant};

use barnabas_tests::mqtt::{Ack, Raw, publish_v4, publish_v5, publish4, publish5};
use barnabas_tests::{TestProxy, read, simple_routes};
use rdkafka::mocking::MockCluster;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

const PASS: &str = r#"
plugins:
  passthrough: { wasm: "{plugin:passthrough}" }
routes:
  - name: r
    from: "mqtt:#"
    plugins: [passthrough]
    to: "kafka:acked"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puback_never_precedes_the_kafka_delivery_report() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let t = TestProxy::start(&simple_routes(&bootstrap, PASS)).await;
    // Warm up the producer's connection and the topic, then slow the broker down.
    assert!(matches!(
        publish_v4(t.mqtt, "w", "warm", 1, b"0").await,
        Ack::Acked { .. }
    ));
    kafka
        .broker_round_trip_time(1, Duration::from_millis(800))
        .unwrap();

    for (i, v5) in [(1, false), (2, true)] {
        let payload = format!("slow-{i}");
        let started = Instant::now();
        let ack = if v5 {
            publish_v5(t.mqtt, "slow5", "slow", 1, payload.as_bytes(), None).await
        } else {
            publish_v4(t.mqtt, "slow4", "slow", 1, payload.as_bytes()).await
        };
        let waited = started.elapsed();
        assert_eq!(
            ack,
            Ack::Acked {
                code: 0,
                reason: None
            }
        );
        assert!(
            waited >= Duration::from_millis(700),
            "acknowledged after {waited:?}, before the broker could answer"
        );
    }
    kafka.broker_round_trip_time(1, Duration::ZERO).unwrap();
    let records = read(&bootstrap, "acked", 3, Duration::from_secs(10)).await;
    let payloads: Vec<_> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    assert!(
        payloads.contains(&"slow-1".to_string()) && payloads.contains(&"slow-2".to_string()),
        "{payloads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_leave_in_publish_order() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let t = TestProxy::start(&simple_routes(&bootstrap, PASS)).await;
    let mut raw = Raw::session(t.mqtt, false, "ordered").await;
    for pkid in 1..=50u16 {
        raw.send_v4(publish4("order/x", 1, pkid, format!("{pkid}").as_bytes()))
            .await;
    }
    for want in 1..=50u16 {
        match raw.recv_v4().await {
            Some(v4::Packet::PubAck(a)) => assert_eq!(a.pkid, want),
            other => panic!("expected PUBACK {want}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_kafka_fails_v5_and_disconnects_v311() {
    // Nothing listens on this port: every delivery times out (message.timeout.ms: 2000).
    let dead = barnabas_tests::free_low_port();
    let yaml = PASS.to_string();
    let config = simple_routes(&format!("127.0.0.1:{dead}"), &yaml)
        .replace("message.timeout.ms: 5000", "message.timeout.ms: 2000");
    let t = TestProxy::start(&config).await;

    let started = Instant::now();
    match publish_v5(t.mqtt, "v5", "x", 1, b"lost?", None).await {
        Ack::Acked {
            code: 0x80,
            reason: Some(r),
        } => assert!(r.contains("try again"), "{r}"),
        other => panic!("expected a failure PUBACK, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15));

    // 3.1.1 has no negative acknowledgement: the proxy closes the connection, no PUBACK.
    let mut raw = Raw::session(t.mqtt, false, "v4").await;
    raw.send_v4(publish4("x", 1, 7, b"lost?")).await;
    assert_eq!(
        raw.recv_v4().await,
        None,
        "no PUBACK, just a closed connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_after_kafka_returns_is_delivered_and_acked() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let config = simple_routes(&bootstrap, PASS)
        .replace("message.timeout.ms: 5000", "message.timeout.ms: 1500");
    let t = TestProxy::start(&config).await;
    assert!(matches!(
        publish_v4(t.mqtt, "w", "warm", 1, b"0").await,
        Ack::Acked { .. }
    ));

    kafka.broker_down(1).unwrap();
    let mut raw = Raw::session(t.mqtt, false, "resender").await;
    raw.send_v4(publish4("back", 1, 1, b"important")).await;
    assert_eq!(raw.recv_v4().await, None, "closed while Kafka is down");

    kafka.broker_up(1).unwrap();
    // The client reconnects and resends with the DUP flag, as 3.1.1 clients do, until it is
    // acknowledged (the producer may need a moment to reconnect to the broker).
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let mut raw = Raw::session(t.mqtt, false, "resender").await;
        let mut again = publish4("back", 1, 1, b"important");
        if let v4::Packet::Publish(p) = &mut again {
            p.dup = true;
        }
        raw.send_v4(again).await;
        match raw.recv_v4().await {
            Some(v4::Packet::PubAck(a)) => {
                assert_eq!(a.pkid, 1);
                break;
            }
            None => assert!(
                Instant::now() < deadline,
                "never acknowledged after Kafka came back"
            ),
            other => panic!("expected PUBACK once Kafka is back, got {other:?}"),
        }
    }
    let records = read(&bootstrap, "acked", 3, Duration::from_secs(10)).await;
    assert!(
        records.iter().any(|r| r.payload == b"important"),
        "the acknowledged message is in Kafka"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_duplicate_is_acknowledged_without_a_second_send() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let t = TestProxy::start(&simple_routes(&bootstrap, PASS)).await;
    let mut raw = Raw::session(t.mqtt, true, "exactly-once").await;
    raw.send_v5(publish5("q2", 2, 9, b"once", None)).await;
    assert!(matches!(raw.recv_v5().await, Some(v5::Packet::PubRec(r)) if r.pkid == 9));
    // The PUBREC "got lost": the client resends the PUBLISH before PUBREL.
    let mut dup = publish5("q2", 2, 9, b"once", None);
    if let v5::Packet::Publish(p) = &mut dup {
        p.dup = true;
    }
    raw.send_v5(dup).await;
    assert!(matches!(raw.recv_v5().await, Some(v5::Packet::PubRec(r)) if r.pkid == 9));
    raw.send_v5(v5::Packet::PubRel(v5::PubRel::new(9, None)))
        .await;
    match raw.recv_v5().await {
        Some(v5::Packet::PubComp(c)) => {
            assert_eq!(c.pkid, 9);
            assert_eq!(c.reason, v5::PubCompReason::Success);
        }
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    // A PUBREL for an id never received is answered "not found".
    raw.send_v5(v5::Packet::PubRel(v5::PubRel::new(77, None)))
        .await;
    assert!(
        matches!(raw.recv_v5().await, Some(v5::Packet::PubComp(c)) if c.reason == v5::PubCompReason::PacketIdentifierNotFound)
    );

    let records = read(&bootstrap, "acked", 2, Duration::from_secs(4)).await;
    assert_eq!(records.iter().filter(|r| r.payload == b"once").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_receive_maximum_and_topic_alias() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let config = simple_routes(&bootstrap, PASS).replace(
        "bind: \"127.0.0.1:0\"",
        "bind: \"127.0.0.1:0\", receive_maximum: 3, topic_alias_maximum: 2",
    );
    let t = TestProxy::start(&config).await;

    // CONNACK advertises the limits.
    let mut raw = Raw::connect(t.mqtt, true).await;
    raw.send_v5(v5::Packet::Connect(
        v5::Connect {
            keep_alive: 30,
            client_id: "lim".into(),
            clean_start: true,
            properties: None,
        },
        None,
        None,
    ))
    .await;
    match raw.recv_v5().await {
        Some(v5::Packet::ConnAck(c)) => {
            let p = c.properties.unwrap();
            assert_eq!(p.receive_max, Some(3));
            assert_eq!(p.topic_alias_max, Some(2));
            assert_eq!(p.retain_available, Some(0));
        }
        other => panic!("{other:?}"),
    }
    // Topic alias: set with the first PUBLISH, used alone by the second.
    let alias = |n| v5::PublishProperties {
        topic_alias: Some(n),
        ..Default::default()
    };
    raw.send_v5(publish5("alias/full", 1, 1, b"a1", Some(alias(1))))
        .await;
    raw.send_v5(publish5("", 1, 2, b"a2", Some(alias(1)))).await;
    for pkid in [1, 2] {
        assert!(
            matches!(raw.recv_v5().await, Some(v5::Packet::PubAck(a)) if a.pkid == pkid && a.reason == v5::PubAckReason::Success)
        );
    }
    let records = read(&bootstrap, "acked", 2, Duration::from_secs(10)).await;
    assert!(
        records
            .iter()
            .all(|r| r.header("mqtt.topic").as_deref() == Some("alias/full"))
    );

    // An alias above the maximum is a protocol violation.
    raw.send_v5(publish5("alias/x", 1, 3, b"a3", Some(alias(5))))
        .await;
    match raw.recv_v5().await {
        Some(v5::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, v5::DisconnectReasonCode::TopicAliasInvalid)
        }
        other => panic!("expected DISCONNECT 0x94, got {other:?}"),
    }

    // More unacknowledged QoS 1 messages than Receive Maximum: DISCONNECT 0x93.
    kafka
        .broker_round_trip_time(1, Duration::from_millis(1500))
        .unwrap();
    let mut raw = Raw::session(t.mqtt, true, "greedy").await;
    for pkid in 1..=4u16 {
        raw.send_v5(publish5("greedy", 1, pkid, b"g", None)).await;
    }
    loop {
        match raw.recv_v5().await {
            Some(v5::Packet::Disconnect(d)) => {
                assert_eq!(
                    d.reason_code,
                    v5::DisconnectReasonCode::ReceiveMaximumExceeded
                );
                break;
            }
            Some(v5::Packet::PubAck(_)) => {}
            other => panic!("expected DISCONNECT 0x93, got {other:?}"),
        }
    }
    kafka.broker_round_trip_time(1, Duration::ZERO).unwrap();
}

/// A topic the cluster says does not exist is refused for good once its metadata has said so for
/// `topic.metadata.propagation.max.ms`: a v5 client gets 0x83, and a 3.1.1 client is acknowledged
/// (not disconnected on every resend), so what it publishes next gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_does_not_exist_is_refused_for_good() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    kafka
        .topic_error(
            "missing",
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        )
        .unwrap();
    let routes = r#"
routes:
  - { name: missing, from: "mqtt:missing/#", to: "kafka:missing" }
  - { name: present, from: "mqtt:#", to: "kafka:present" }
"#;
    let t = TestProxy::start(&simple_routes(&bootstrap, routes)).await;
    match publish_v5(t.mqtt, "v5", "missing/x", 1, b"lost", None).await {
        Ack::Acked {
            code: 0x83,
            reason: Some(r),
        } => assert!(r.contains("missing"), "{r}"),
        other => panic!("expected 0x83, got {other:?}"),
    }
    let mut raw = Raw::session(t.mqtt, false, "v4").await;
    raw.send_v4(publish4("missing/x", 1, 1, b"lost")).await;
    raw.send_v4(publish4("other", 1, 2, b"kept")).await;
    for pkid in [1, 2] {
        match raw.recv_v4().await {
            Some(v4::Packet::PubAck(a)) => assert_eq!(a.pkid, pkid),
            other => panic!("PUBACK {pkid}: got {other:?}"),
        }
    }
    let records = read(&bootstrap, "present", 1, Duration::from_secs(10)).await;
    assert_eq!(records[0].payload, b"kept");
}

/// A producer the broker fences (as a broker that refuses librdkafka's own epoch bump after a
/// timeout does, batch after batch) is replaced by a new one: the fenced message gets a failure
/// code, its resend is delivered, and the replacement is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_producer_is_replaced() {
    use barnabas_tests::scrape;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let yaml = simple_routes(&bootstrap, PASS) + "admin: { bind: \"127.0.0.1:0\" }\n";
    let t = TestProxy::start(&yaml).await;
    assert!(matches!(
        publish_v5(t.mqtt, "w", "warm", 1, b"0", None).await,
        Ack::Acked { code: 0, .. }
    ));
    kafka.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
    );
    match publish_v5(t.mqtt, "f", "fenced", 1, b"1", None).await {
        Ack::Acked { code: 0x80, .. } => {}
        other => panic!("expected 0x80 for the fenced batch, got {other:?}"),
    }
    assert!(matches!(
        publish_v5(t.mqtt, "f", "fenced", 1, b"1", None).await,
        Ack::Acked { code: 0, .. }
    ));
    let m = scrape(t.proxy.admin_addr().unwrap()).await;
    assert_eq!(
        m.value(
            "barnabas_kafka_producer_renewals_total",
            &[("destination", "kafka")]
        ),
        1.0
    );
    let records = read(&bootstrap, "acked", 2, Duration::from_secs(10)).await;
    assert!(
        records.iter().any(|r| r.payload == b"1"),
        "the resend is in Kafka"
    );
}
