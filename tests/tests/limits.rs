//! Bounded resources: connection limits per listener and overall, the in-flight byte budget that
//! stops reading instead of growing, and keep-alive that does not count the time the proxy itself
//! stopped reading.

use std::time::{Duration, Instant};

use barnabas_tests::mqtt::{Raw, publish4, publish5};
use barnabas_tests::{TestProxy, read, scrape, simple_routes};
use rdkafka::mocking::MockCluster;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

const ROUTES: &str = r#"
routes:
  - { name: r, from: "mqtt:#", to: "kafka:out" }
"#;

/// Whether a new 3.1.1 connection is served: CONNECT answered with CONNACK.
async fn served(t: &TestProxy) -> Option<Raw> {
    let mut raw = Raw::connect(t.mqtt, false).await;
    raw.send_v4(v4::Packet::Connect(v4::Connect::new("c")))
        .await;
    match raw.recv_v4().await {
        Some(v4::Packet::ConnAck(_)) => Some(raw),
        None => None,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_a_limit_are_closed_at_once() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    // The listener's own limit.
    let yaml = simple_routes(&bootstrap, ROUTES).replace(
        "bind: \"127.0.0.1:0\" }",
        "bind: \"127.0.0.1:0\", max_connections: 2 }",
    );
    let t = TestProxy::start(&yaml).await;
    let mut first = Raw::session(t.mqtt, false, "one").await;
    let _second = Raw::session(t.mqtt, false, "two").await;
    assert!(served(&t).await.is_none(), "the third is refused");
    first.send_v4(v4::Packet::Disconnect).await;
    assert!(first.closed().await);
    // The place comes back once the first connection is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while served(&t).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "a freed place is never given again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The proxy-wide limit.
    let yaml = simple_routes(&bootstrap, ROUTES) + "limits: { max_connections: 1 }\n";
    let t = TestProxy::start(&yaml).await;
    let _only = Raw::session(t.mqtt, false, "only").await;
    assert!(served(&t).await.is_none(), "the second is refused");
}

/// With Kafka away, deliveries wait for its timeout. A 32 KiB budget lets three 10 KiB messages
/// in; the rest of the client's burst stays unread in the socket until bytes come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inflight_budget_stops_reading_instead_of_growing() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let yaml = simple_routes(&bootstrap, ROUTES)
        .replace("message.timeout.ms: 5000", "message.timeout.ms: 3000")
        + "limits: { max_inflight_bytes: 32768 }\nadmin: { bind: \"127.0.0.1:0\" }\n";
    let t = TestProxy::start(&yaml).await;
    let admin = t.proxy.admin_addr().unwrap();
    let mut warm = Raw::session(t.mqtt, true, "warm").await;
    warm.send_v5(publish5("warm", 1, 1, b"w", None)).await;
    assert!(matches!(warm.recv_v5().await, Some(v5::Packet::PubAck(_))));

    kafka.broker_down(1).unwrap();
    let mut raw = Raw::session(t.mqtt, true, "bursty").await;
    let payload = vec![b'x'; 10 * 1024];
    for pkid in 1..=20 {
        raw.send_v5(publish5("burst", 1, pkid, &payload, None))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let m = scrape(admin).await;
    let taken = m.value("barnabas_messages_in_total", &[("route", "r")]) - 1.0;
    let held = m.value("barnabas_inflight_bytes", &[]);
    assert!(
        taken <= 3.0,
        "{taken} messages taken in with a budget for 3"
    );
    assert!(held <= 32768.0, "{held} bytes in flight");

    kafka.broker_up(1).unwrap();
    // Every message is answered in the end: failed while Kafka was away, delivered after.
    for pkid in 1..=20 {
        match raw.recv_v5().await {
            Some(v5::Packet::PubAck(ack)) => assert_eq!(ack.pkid, pkid),
            other => panic!("PUBACK {pkid}: got {other:?}"),
        }
    }
    let m = scrape(admin).await;
    assert_eq!(m.value("barnabas_inflight_bytes", &[]), 0.0);
}

/// The same budget holds an AMQP link back: transfers beyond it wait unread (no new credit) while
/// Kafka is away, the link keeps settling what finishes, and every transfer is settled in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inflight_budget_holds_an_amqp_link_back() {
    use fe2o3_amqp::{Connection, Sender, Session};

    let kafka = MockCluster::new(1).unwrap();
    let yaml = barnabas_tests::routes(
        r#"
listeners:
  mqtt: { bind: "127.0.0.1:0" }
  amqp: { bind: "127.0.0.1:0" }
destinations:
  kafka: { kind: kafka, bootstrap: "{bootstrap}", options: { message.timeout.ms: 3000 } }
routes:
  - { name: r, from: "amqp:#", to: "kafka:out" }
limits: { max_inflight_bytes: 32768 }
admin: { bind: "127.0.0.1:0" }
"#,
        &kafka.bootstrap_servers(),
    );
    let t = TestProxy::start(&yaml).await;
    let admin = t.proxy.admin_addr().unwrap();
    let url = format!("amqp://{}", t.proxy.amqp_addr().unwrap());
    let mut connection = Connection::open("bursty", &url[..]).await.unwrap();
    let mut session = Session::begin(&mut connection).await.unwrap();
    let mut sender = Sender::attach(&mut session, "bursty", "burst")
        .await
        .unwrap();
    let warm = sender.send("w".to_string()).await.unwrap();
    assert!(warm.is_accepted(), "{warm:?}");

    kafka.broker_down(1).unwrap();
    let mut outcomes = Vec::new();
    for _ in 0..20 {
        let sent = sender.send_batchable("x".repeat(10 * 1024)).await.unwrap();
        outcomes.push(sent);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let m = scrape(admin).await;
    let taken = m.value("barnabas_messages_in_total", &[("route", "r")]) - 1.0;
    assert!(
        taken <= 3.0,
        "{taken} transfers taken in with a budget for 3"
    );
    assert!(m.value("barnabas_inflight_bytes", &[]) <= 32768.0);

    kafka.broker_up(1).unwrap();
    // Released while Kafka was away, accepted after: each transfer gets its outcome.
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let outcome = tokio::time::timeout(Duration::from_secs(30), outcome)
            .await
            .unwrap_or_else(|_| panic!("transfer {i} never settled"));
        assert!(outcome.is_ok(), "transfer {i}: {outcome:?}");
    }
    let m = scrape(admin).await;
    assert_eq!(m.value("barnabas_inflight_bytes", &[]), 0.0);
}

/// A 3.1.1 client at its receive maximum is not read; the PINGREQs it sends meanwhile wait in the
/// socket. Its keep-alive must not run out because the proxy stopped reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_does_not_count_while_the_proxy_is_not_reading() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let yaml = simple_routes(&bootstrap, ROUTES).replace(
        "bind: \"127.0.0.1:0\" }",
        "bind: \"127.0.0.1:0\", receive_maximum: 1 }",
    );
    let t = TestProxy::start(&yaml).await;
    // Warm the producer, then make every Kafka round trip take 3 s.
    assert!(matches!(
        barnabas_tests::mqtt::publish_v4(t.mqtt, "w", "warm", 1, b"w").await,
        barnabas_tests::mqtt::Ack::Acked { .. }
    ));
    kafka
        .broker_round_trip_time(1, Duration::from_millis(3000))
        .unwrap();

    let mut raw = Raw::connect(t.mqtt, false).await;
    let mut connect = v4::Connect::new("slow");
    connect.keep_alive = 1;
    raw.send_v4(v4::Packet::Connect(connect)).await;
    assert!(matches!(raw.recv_v4().await, Some(v4::Packet::ConnAck(_))));
    raw.send_v4(publish4("a", 1, 1, b"1")).await;
    raw.send_v4(publish4("a", 1, 2, b"2")).await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        raw.send_v4(v4::Packet::PingReq).await;
    }
    let mut acks = Vec::new();
    while acks.len() < 2 {
        match raw.recv_v4().await {
            Some(v4::Packet::PubAck(a)) => acks.push(a.pkid),
            Some(v4::Packet::PingResp) => {}
            other => panic!("closed or unexpected before both PUBACKs: {other:?}"),
        }
    }
    assert_eq!(acks, [1, 2]);
    kafka
        .broker_round_trip_time(1, Duration::from_millis(0))
        .unwrap();
    let records = read(&bootstrap, "out", 3, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 3);
}
