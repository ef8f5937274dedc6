//! AMQP 1.0 in and out, with real peers: Qpid Proton and fe2o3-amqp clients into the proxy,
//! RabbitMQ (AMQP 1.0 plugin) and Kafka behind it, every pairing through the same routes and
//! plugins, and each client's outcome reflecting the downstream's.

use std::time::{Duration, Instant};

use barnabas_tests::amqp::{Rabbit, proton_send, receive, send};
use barnabas_tests::mqtt::{Ack, mosquitto_pub, publish_v5};
use barnabas_tests::{TestProxy, read, routes};
use fe2o3_amqp::types::definitions::{ErrorCondition, SessionError};
use fe2o3_amqp::types::messaging::{Body, Message, Outcome};
use fe2o3_amqp::types::performatives::Close;
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use rdkafka::mocking::MockCluster;
use serde_json::json;

/// A proxy with MQTT and AMQP listeners, Kafka destination `kafka` and AMQP destination `broker`.
async fn proxy(bootstrap: &str, broker: &str, plugins_and_routes: &str) -> TestProxy {
    // alice's password is "secret".
    let yaml = format!(
        r#"
listeners:
  mqtt: {{ bind: "127.0.0.1:0" }}
  amqp:
    bind: "127.0.0.1:0"
    max_message_size: 65536
    users: {{ alice: "$argon2id$v=19$m=19456,t=2,p=1$JuuwxA74eh8o1Z7tDoMAIg$mL8KcP90n05JK/2Tg6Uwg7OYP4bEV0rafUmxqkDZ2wE" }}
destinations:
  kafka: {{ kind: kafka, bootstrap: "{{bootstrap}}", options: {{ message.timeout.ms: 3000, linger.ms: 0, auto.offset.reset: earliest }} }}
  broker: {{ kind: amqp, url: "{broker}" }}
{plugins_and_routes}"#
    );
    TestProxy::start(&routes(&yaml, bootstrap)).await
}

fn amqp_url(t: &TestProxy) -> String {
    format!("amqp://{}", t.proxy.amqp_addr().expect("amqp listener"))
}

const ROUTES: &str = r#"
plugins:
  enrich: { wasm: "{plugin:enrich}", config: { site: plant-7 } }
  gate: { wasm: "{plugin:chaos}", config: { behaviour: reject, when_payload: "bad" } }
routes:
  - name: orders
    from: "amqp:orders/+"
    plugins: [enrich]
    to: "kafka:orders.{2}"
  - name: audit
    from: "amqp:audit/#"
    plugins: [gate]
    to: "broker:/queue/audit"
  - name: telemetry
    from: "mqtt:telemetry/#"
    plugins: [enrich]
    to: "broker:/queue/telemetry"
"#;

fn app_property(m: &Message<Body<Value>>, name: &str) -> Option<String> {
    m.application_properties
        .as_ref()?
        .0
        .get(name)
        .map(|v| match v {
            SimpleValue::String(s) => s.clone(),
            other => format!("{other:?}"),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proton_into_kafka_and_rabbitmq() {
    let kafka = MockCluster::new(1).unwrap();
    let rabbit = Rabbit::start();
    let t = proxy(&kafka.bootstrap_servers(), &rabbit.url, ROUTES).await;
    let url = amqp_url(&t);

    // The bridge: AMQP into Kafka, transformed by a plugin, key and properties carried.
    let order = json!({
        "body": "{\"item\":\"bolt\"}",
        "id": "m1",
        "subject": "new",
        "content_type": "application/json",
        "properties": { "region": "eu", "count": 3 },
        "annotations": { "x-opt-kafka-key": "cust-1", "x-opt-kafka-partition": 2 },
    });
    let outcomes = proton_send(&url, "orders/eu", None, json!([order, order])).await;
    assert_eq!(outcomes[0]["state"], "accepted", "{outcomes}");
    assert_eq!(outcomes[1]["state"], "accepted", "{outcomes}");
    let records = read(
        &kafka.bootstrap_servers(),
        "orders.eu",
        2,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(records.len(), 2);
    let r = &records[0];
    assert_eq!(r.key.as_deref(), Some(&b"cust-1"[..]));
    assert_eq!(r.partition, 2);
    assert_eq!(r.json(), json!({"item": "bolt", "site": "plant-7"}));
    for (name, value) in [
        ("message-id", "m1"),
        ("subject", "new"),
        ("content-type", "application/json"),
        ("region", "eu"),
        ("count", "3"),
        ("x-opt-kafka-key", "cust-1"),
        ("amqp.body", "amqp-value"),
        ("amqp.address", "orders/eu"),
        ("site", "plant-7"),
    ] {
        assert_eq!(
            r.header(name).as_deref(),
            Some(value),
            "header {name}: {:?}",
            r.headers
        );
    }
    assert!(
        r.header("amqp.client-id")
            .unwrap()
            .starts_with("anonymous@")
    );

    // AMQP into RabbitMQ as alice (PLAIN): accepted only once RabbitMQ accepted; a plugin's
    // reject reaches the client as `rejected` with the plugin's reason.
    let outcomes = proton_send(
        &url,
        "audit/login",
        Some(("alice", "secret")),
        json!([{ "data": "ok", "id": "a1", "properties": { "who": "bob" } }, { "data": "bad" }]),
    )
    .await;
    assert_eq!(outcomes[0]["state"], "accepted", "{outcomes}");
    assert_eq!(outcomes[1]["state"], "rejected", "{outcomes}");
    assert_eq!(outcomes[1]["condition"], "amqp:precondition-failed");
    assert!(
        outcomes[1]["description"]
            .as_str()
            .unwrap()
            .contains("rejected on purpose")
    );
    let got = receive(&rabbit.url, "/queue/audit", 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    match &m.body {
        Body::Data(d) => assert_eq!(
            d.iter().flat_map(|s| s.0.to_vec()).collect::<Vec<u8>>(),
            b"ok"
        ),
        other => panic!("expected a data body, got {other:?}"),
    }
    assert_eq!(app_property(m, "who").as_deref(), Some("bob"));
    assert_eq!(app_property(m, "amqp.client-id").as_deref(), Some("alice"));
    assert_eq!(
        app_property(m, "amqp.address").as_deref(),
        Some("audit/login")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_into_rabbitmq_acked_after_rabbitmq_accepted() {
    let kafka = MockCluster::new(1).unwrap();
    let rabbit = Rabbit::start();
    let t = proxy(&kafka.bootstrap_servers(), &rabbit.url, ROUTES).await;

    // The gateway: mosquitto_pub -q 1 succeeds only once RabbitMQ accepted.
    let (ok, out) = mosquitto_pub(
        t.mqtt,
        &["-q", "1", "-t", "telemetry/d1", "-m", "{\"t\":1}"],
    )
    .await;
    assert!(ok, "{out}");
    // MQTT 5 properties map onto AMQP properties.
    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
        content_type: Some("application/json".into()),
        response_topic: Some("replies/d2".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr-7")),
        user_properties: vec![("unit".into(), "celsius".into())],
        ..Default::default()
    };
    let ack = publish_v5(t.mqtt, "d2", "telemetry/d2", 1, b"{\"t\":2}", Some(props)).await;
    assert_eq!(
        ack,
        Ack::Acked {
            code: 0,
            reason: None
        }
    );

    let got = receive(&rabbit.url, "/queue/telemetry", 2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    let payload = |m: &Message<Body<Value>>| match &m.body {
        Body::Data(d) => serde_json::from_slice::<serde_json::Value>(
            &d.iter().flat_map(|s| s.0.to_vec()).collect::<Vec<u8>>(),
        )
        .unwrap(),
        other => panic!("expected a data body, got {other:?}"),
    };
    assert_eq!(payload(&got[0]), json!({"t": 1, "site": "plant-7"}));
    assert_eq!(
        app_property(&got[0], "mqtt.topic").as_deref(),
        Some("telemetry/d1")
    );
    let second = &got[1];
    let p = second.properties.as_ref().unwrap();
    assert_eq!(
        p.content_type.as_ref().map(|s| s.0.as_str()),
        Some("application/json")
    );
    assert_eq!(p.reply_to.as_deref(), Some("replies/d2"));
    assert_eq!(
        format!("{:?}", p.correlation_id),
        "Some(String(\"corr-7\"))"
    );
    assert_eq!(app_property(second, "unit").as_deref(), Some("celsius"));

    // With RabbitMQ gone, the MQTT 5 client is told the message was not delivered (0x80).
    tokio::task::block_in_place(|| rabbit.stop());
    let ack = publish_v5(t.mqtt, "d3", "telemetry/d3", 1, b"{\"t\":3}", None).await;
    assert!(matches!(ack, Ack::Acked { code: 0x80, .. }), "{ack:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_follow_the_downstream() {
    // A broker that answers after 800 ms, and an address whose Kafka is down.
    let kafka = MockCluster::new(1).unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let extra = r#"
  - name: slow
    from: "amqp:slow"
    to: "kafka:slow"
unmatched: reject
"#;
    let rabbit_url = format!("amqp://{dead}");
    let t = proxy(
        &kafka.bootstrap_servers(),
        &rabbit_url,
        &(ROUTES.to_string() + extra),
    )
    .await;
    let url = amqp_url(&t);

    // Accepted, but only after the delayed Kafka acknowledged (the first send warms the topic up).
    let value = || {
        Message::builder()
            .body(Body::Value(fe2o3_amqp::types::messaging::AmqpValue(
                Value::String("x".into()),
            )))
            .build()
    };
    let warm = send(&url, "slow", vec![value()]).await.unwrap();
    assert!(matches!(warm[0], Outcome::Accepted(_)), "{warm:?}");
    kafka
        .broker_round_trip_time(1, Duration::from_millis(800))
        .unwrap();
    let started = Instant::now();
    let outcomes = send(&url, "slow", vec![value()]).await.unwrap();
    assert!(matches!(outcomes[0], Outcome::Accepted(_)), "{outcomes:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "accepted after {:?}",
        started.elapsed()
    );

    // The AMQP destination is unreachable: released, so the client may resend.
    let outcomes = proton_send(&url, "audit/x", None, json!([{ "data": "fine" }])).await;
    assert_eq!(outcomes[0]["state"], "released", "{outcomes}");

    // An address no route takes: the attach is refused with amqp:not-found.
    let refused = proton_send(&url, "nowhere", None, json!([{ "data": "x" }])).await;
    assert_eq!(refused["error"], "link", "{refused}");
    assert_eq!(refused["condition"], "amqp:not-found", "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_an_error_on_its_connection_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let kafka = MockCluster::new(1).unwrap();
    let t = proxy(&kafka.bootstrap_servers(), "amqp://127.0.0.1:1", ROUTES).await;
    let url = amqp_url(&t);
    let addr = t.proxy.amqp_addr().unwrap();

    // Garbage instead of a protocol header: the server answers with its own header and closes.
    let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was not closed");

    // A wrong password.
    let refused = proton_send(
        &url,
        "orders/eu",
        Some(("alice", "wrong")),
        json!([{ "body": "{}" }]),
    )
    .await;
    assert!(refused["error"].is_string(), "{refused}");
    assert_eq!(
        refused["condition"], "amqp:unauthorized-access",
        "{refused}"
    );

    // A message over max_message_size: the link is detached with message-size-exceeded.
    let big = "x".repeat(100_000);
    let refused = proton_send(&url, "orders/eu", None, json!([{ "body": big }])).await;
    assert_eq!(refused["error"], "link", "{refused}");
    assert_eq!(
        refused["condition"], "amqp:link:message-size-exceeded",
        "{refused}"
    );

    // A multi-frame message under the limit is fine.
    let large = format!("{{\"pad\":\"{}\"}}", "y".repeat(50_000));
    let ok = proton_send(&url, "orders/eu", None, json!([{ "body": large }])).await;
    assert_eq!(ok[0]["state"], "accepted", "{ok}");

    // A transfer on a link the client never attached: the connection is closed with
    // amqp:session:unattached-handle.
    let close = unattached_transfer(addr).await;
    let error = close.error.expect("an error in the Close frame");
    assert!(
        matches!(
            error.condition,
            ErrorCondition::SessionError(SessionError::UnattachedHandle)
        ),
        "{error:?}"
    );
    assert!(
        error.description.unwrap_or_default().contains("handle 9"),
        "the description names the handle"
    );

    // Everyone else is served throughout.
    let ok = proton_send(&url, "orders/eu", None, json!([{ "body": "{\"n\":1}" }])).await;
    assert_eq!(ok[0]["state"], "accepted", "{ok}");
}

/// Speaks AMQP frame by frame: open, begin, then a transfer on handle 9, which was never attached.
/// Returns the Close frame the proxy answers with.
async fn unattached_transfer(addr: std::net::SocketAddr) -> Close {
    use barnabas_tests::amqp::raw_frame as frame;
    use fe2o3_amqp::types::performatives::{Begin, Transfer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let open = barnabas_tests::amqp::raw_open("raw");
    let begin = Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window: 100,
        outgoing_window: 100,
        handle_max: 16.into(),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    let transfer = Transfer {
        handle: 9.into(),
        delivery_id: Some(0),
        delivery_tag: Some(vec![1].into()),
        message_format: Some(0),
        settled: Some(false),
        more: false,
        rcv_settle_mode: None,
        state: None,
        resume: false,
        aborted: false,
        batchable: false,
    };
    // A data section holding "{}".
    let payload = [0x00, 0x53, 0x75, 0xa0, 2, b'{', b'}'];
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = b"AMQP\x00\x01\x00\x00".to_vec();
    out.extend(frame(&open, &[]));
    out.extend(frame(&begin, &[]));
    out.extend(frame(&transfer, &payload));
    socket.write_all(&out).await.unwrap();

    // Read the header, then frames, until the Close.
    let read = async {
        let mut header = [0u8; 8];
        socket.read_exact(&mut header).await.unwrap();
        assert_eq!(&header, b"AMQP\x00\x01\x00\x00");
        loop {
            let mut head = [0u8; 8];
            socket
                .read_exact(&mut head)
                .await
                .expect("a Close before the end");
            let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let mut body = vec![0u8; size - 8];
            socket.read_exact(&mut body).await.unwrap();
            // The descriptor code of a performative: 0x00 0x53 CODE.
            if body.len() > 2 && body[2] == 0x18 {
                return serde_amqp::from_slice::<Close>(&body).unwrap();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the proxy answered within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restart_mid_stream_loses_nothing_acked() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use barnabas_bench::load::{Load, MqttVersion};

    let kafka = MockCluster::new(1).unwrap();
    let rabbit = Rabbit::start();
    let load_route = "  - name: load\n    from: \"mqtt:load/#\"\n    to: \"broker:/queue/load\"\n";
    let t = proxy(
        &kafka.bootstrap_servers(),
        &rabbit.url,
        &(ROUTES.to_string() + load_route),
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let loads: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(
                Load {
                    addr: t.mqtt,
                    client_id: format!("load{i}"),
                    topic: format!("load/d{i}"),
                    window: 16,
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
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = counter.load(Ordering::Relaxed);
    tokio::task::block_in_place(|| rabbit.stop());
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| rabbit.start_again());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut refused = 0;
    for l in loads {
        let report = l.await.unwrap();
        assert_eq!(report.error, None);
        acked.extend(report.acked);
        refused += report.refused.len();
    }
    assert!(before > 0, "nothing was acknowledged before the restart");
    assert!(
        acked.len() as u64 > before,
        "nothing was acknowledged after the restart"
    );

    // Every message a client saw acknowledged is in the queue.
    let got = receive(
        &rabbit.url,
        "/queue/load",
        acked.len() + refused,
        Duration::from_secs(5),
    )
    .await;
    let received: std::collections::HashSet<Vec<u8>> = got
        .iter()
        .map(|m| match &m.body {
            Body::Data(d) => d.iter().flat_map(|s| s.0.to_vec()).collect(),
            other => panic!("expected a data body, got {other:?}"),
        })
        .collect();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|p| !received.contains(p.as_bytes()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages are missing, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fe2o3_amqp_to_amqp_keeps_properties() {
    use fe2o3_amqp::types::messaging::{AmqpValue, ApplicationProperties, MessageId, Properties};
    use fe2o3_amqp::types::primitives::OrderedMap;

    let kafka = MockCluster::new(1).unwrap();
    let rabbit = Rabbit::start();
    let relay = "  - name: relay\n    from: \"amqp:relay/#\"\n    to: \"broker:/queue/relay\"\n";
    let t = proxy(
        &kafka.bootstrap_servers(),
        &rabbit.url,
        &(ROUTES.to_string() + relay),
    )
    .await;
    let url = amqp_url(&t);

    let mut app = OrderedMap::new();
    app.insert("priority".to_string(), SimpleValue::String("high".into()));
    let message = Message::builder()
        .properties(Properties {
            message_id: Some(MessageId::String("r-1".into())),
            correlation_id: Some(MessageId::String("c-1".into())),
            reply_to: Some("replies/r".into()),
            content_type: Some("text/plain".into()),
            subject: Some("greeting".into()),
            ..Default::default()
        })
        .application_properties(ApplicationProperties(app))
        .body(Body::Value(AmqpValue(Value::String("hello".into()))))
        .build();
    let outcomes = send(&url, "relay/a", vec![message]).await.unwrap();
    assert!(matches!(outcomes[0], Outcome::Accepted(_)), "{outcomes:?}");

    let got = receive(&rabbit.url, "/queue/relay", 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    // The amqp-value body comes out as an amqp-value again.
    match &m.body {
        Body::Value(v) => assert_eq!(v.0, Value::String("hello".into())),
        other => panic!("expected an amqp-value body, got {other:?}"),
    }
    let p = m.properties.as_ref().unwrap();
    assert_eq!(p.message_id, Some(MessageId::String("r-1".into())));
    assert_eq!(p.correlation_id, Some(MessageId::String("c-1".into())));
    assert_eq!(p.reply_to.as_deref(), Some("replies/r"));
    assert_eq!(p.subject.as_deref(), Some("greeting"));
    assert_eq!(
        p.content_type.as_ref().map(|s| s.0.as_str()),
        Some("text/plain")
    );
    assert_eq!(app_property(m, "priority").as_deref(), Some("high"));
    assert_eq!(app_property(m, "amqp.address").as_deref(), Some("relay/a"));

    // A receiving link must name the address it reads: one without is detached at once with
    // amqp:invalid-field (attach, then detach with the error, as the spec has it).
    let mut connection = fe2o3_amqp::Connection::open("reader", url.as_str())
        .await
        .unwrap();
    let mut session = fe2o3_amqp::Session::begin(&mut connection).await.unwrap();
    let source = fe2o3_amqp::types::messaging::Source::builder().build();
    let attached = fe2o3_amqp::Receiver::builder()
        .name("reader")
        .source(source)
        .attach(&mut session)
        .await;
    let error = match attached {
        Err(e) => format!("{e:?}"),
        Ok(mut receiver) => {
            let next = tokio::time::timeout(Duration::from_secs(5), receiver.recv::<Body<Value>>())
                .await
                .expect("the link is detached in time");
            format!("{next:?}")
        }
    };
    assert!(error.contains("InvalidField"), "{error}");
}

/// A Qpid Proton receiver attached to `address` on the proxy, once the proxy has attached it;
/// its lines (`{...}` JSON per message) follow.
async fn proton_receiver(
    url: &str,
    address: &str,
    count: usize,
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new("/usr/bin/python3")
        .arg(barnabas_tests::repo_root().join("tests/scripts/amqp_receive.py"))
        .args([url, address, &count.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 with python3-qpid-proton: run `make setup`");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the receiver attached in time")
        .unwrap();
    assert_eq!(ready.as_deref(), Some("READY"));
    (child, lines)
}

async fn next_json(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> serde_json::Value {
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("a message in time")
        .unwrap()
        .expect("the receiver printed a message");
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proton_receivers_get_records_from_kafka_and_from_a_rabbitmq_queue() {
    let kafka = MockCluster::new(1).unwrap();
    kafka.create_topic("orders-out", 1, 1).unwrap();
    let rabbit = Rabbit::start();
    let t = proxy(
        &kafka.bootstrap_servers(),
        &rabbit.url,
        r#"
routes:
  - name: kafka-orders
    from: "kafka:orders-out"
    to: "amqp:orders/{key}"
    ttl_ms: 10000
  - name: rabbit-orders
    from: "broker:/queue/orders-back"
    to: "amqp:orders/rabbit"
    ttl_ms: 10000
"#,
    )
    .await;
    let url = amqp_url(&t);

    // From Kafka: the record keyed cust-1 reaches the receiver of orders/cust-1, its headers as
    // application properties and correlation data as the correlation id.
    let (mut rx, mut lines) = proton_receiver(&url, "orders/cust-1", 1).await;
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .create()
        .unwrap();
    let headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header {
            key: "region",
            value: Some("eu"),
        })
        .insert(rdkafka::message::Header {
            key: "correlation-data",
            value: Some("order-7"),
        });
    producer
        .send(
            rdkafka::producer::FutureRecord::to("orders-out")
                .key("cust-1")
                .payload("shipped")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");
    let m = next_json(&mut lines).await;
    assert_eq!(m["body"], "shipped", "{m}");
    assert_eq!(m["properties"]["region"], "eu", "{m}");
    assert_eq!(m["correlation_id"], "order-7", "{m}");
    let _ = rx.wait().await;

    // From a RabbitMQ queue: taken off the queue only once the proxy's receiver accepted it.
    let (mut rx, mut lines) = proton_receiver(&url, "orders/rabbit", 1).await;
    let message = Message::builder()
        .application_properties(
            fe2o3_amqp::types::messaging::ApplicationProperties::builder()
                .insert("region", SimpleValue::String("us".into()))
                .build(),
        )
        .body(Body::Value(fe2o3_amqp::types::messaging::AmqpValue(
            Value::String("from rabbit".into()),
        )))
        .build();
    // A durable target, as the proxy's reader declared the queue.
    let mut connection = fe2o3_amqp::Connection::open("test-sender", rabbit.url.as_str())
        .await
        .unwrap();
    let mut session = fe2o3_amqp::Session::begin(&mut connection).await.unwrap();
    let target = fe2o3_amqp::types::messaging::Target::builder()
        .address("/queue/orders-back")
        .durable(fe2o3_amqp::types::messaging::TerminusDurability::Configuration)
        .build();
    let mut sender = fe2o3_amqp::Sender::builder()
        .name("test-sender")
        .target(target)
        .attach(&mut session)
        .await
        .unwrap();
    let outcome = sender.send(message).await.unwrap();
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), sender.close()).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), session.end()).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), connection.close()).await;
    let m = next_json(&mut lines).await;
    assert_eq!(m["body"], "from rabbit", "{m}");
    assert_eq!(m["properties"]["region"], "us", "{m}");
    let _ = rx.wait().await;
    t.proxy.shutdown(Duration::from_secs(5)).await;
    let left = receive(&rabbit.url, "/queue/orders-back", 1, Duration::from_secs(2)).await;
    assert!(left.is_empty(), "the queue still holds {left:?}");
}
