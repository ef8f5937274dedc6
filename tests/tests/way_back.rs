//! The way back: records read from Kafka (tansu, in its own process) by a source route reach the
//! proxy's MQTT subscribers, and their offsets are committed only once the subscribers have them
//! or the record was reported undelivered.

use std::process::Stdio;
use std::time::Duration;

use barnabas_tests::mqtt::Raw;
use barnabas_tests::{Tansu, TestProxy, read, simple_routes};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rumqttc::mqttbytes::{QoS, v4};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A W3C trace context, carried as a header (Kafka), user property (MQTT 5) and application
/// property (AMQP).
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

const COMMAND_ROUTES: &str = r#"
instance: test
routes:
  - name: commands
    from: "kafka:commands"
    to: "mqtt:command/{key}/req"
    qos: 1
    ttl_ms: 2000
    undelivered: "kafka:command-failures"
  - name: responses
    from: "mqtt:command/+/res"
    to: "kafka:responses"
"#;

/// The routes, with the Kafka destination reading a new group from the start of the topic.
fn command_routes(bootstrap: &str) -> String {
    simple_routes(bootstrap, COMMAND_ROUTES).replace(
        "options: { message.timeout.ms: 5000, linger.ms: 0 }",
        "options: { message.timeout.ms: 5000, linger.ms: 0, auto.offset.reset: earliest }",
    )
}

/// tansu with the topics the command routes use.
fn command_tansu() -> Tansu {
    let tansu = Tansu::start();
    for topic in ["commands", "command-failures", "responses"] {
        tansu.create_topic(topic, 1);
    }
    tansu
}

/// Subscribes an MQTT 5 client to `command/dev1/req` at QoS 1 and waits for its SUBACK.
async fn subscribe_dev1(mut raw: Raw) -> Raw {
    raw.send_v5(v5::Packet::Subscribe(v5::Subscribe::new(
        v5::Filter::new("command/dev1/req", QoS5::AtLeastOnce),
        None,
    )))
    .await;
    assert!(matches!(raw.recv_v5().await, Some(v5::Packet::SubAck(_))));
    raw
}

async fn produce(bootstrap: &str, key: &str, payload: &str, headers: &[(&str, &[u8])]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    let mut h = OwnedHeaders::new();
    for (name, value) in headers {
        h = h.insert(Header {
            key: name,
            value: Some(*value),
        });
    }
    producer
        .send(
            FutureRecord::to("commands")
                .key(key)
                .payload(payload)
                .headers(h),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");
}

/// Starts `mosquitto_sub` and returns once the proxy has granted its subscription.
async fn mosquitto_sub(
    addr: std::net::SocketAddr,
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    // Line-buffered: a pipe would otherwise hold the SUBACK line back until mosquitto_sub exits.
    let mut child = tokio::process::Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub"])
        .args([
            "-h",
            &addr.ip().to_string(),
            "-p",
            &addr.port().to_string(),
            "-d",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub is not installed: run `make setup`");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("SUBACK") {
                return;
            }
        }
        panic!("mosquitto_sub ended before its SUBACK");
    })
    .await
    .expect("SUBACK in time");
    (child, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_record_reaches_mosquitto_sub_and_undelivered_ones_are_reported() {
    let tansu = command_tansu();
    let t = TestProxy::start(&command_routes(&tansu.bootstrap)).await;

    // dev1 listens, as MQTT 5, printing topic, user properties, correlation data and payload.
    let (mut sub, mut lines) = mosquitto_sub(
        t.mqtt,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-i",
            "dev1",
            "-t",
            "command/dev1/req",
            "-F",
            "MSG %t|%q|%P|%R|%D|%p",
        ],
    )
    .await;
    produce(
        &tansu.bootstrap,
        "dev1",
        "reboot",
        &[
            ("traceparent", TRACEPARENT.as_bytes()),
            ("response-topic", b"command/dev1/res"),
            ("correlation-data", b"c-17"),
        ],
    )
    .await;
    let line = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("mosquitto_sub ended");
            if let Some(rest) = line.strip_prefix("MSG ") {
                return rest.to_string();
            }
        }
    })
    .await
    .expect("the command reached mosquitto_sub");
    assert_eq!(
        line,
        format!("command/dev1/req|1|traceparent:{TRACEPARENT}|command/dev1/res|c-17|reboot"),
        "topic from the key, QoS 1, user property, response topic, correlation data, payload"
    );
    let _ = sub.kill().await;

    // Nobody is subscribed for dev9: a failure record, with why and the correlation data.
    produce(
        &tansu.bootstrap,
        "dev9",
        "reboot",
        &[("correlation-data", b"\x09")],
    )
    .await;
    // dev2 subscribes and never acknowledges: timed out after ttl_ms.
    let mut raw = Raw::session(t.mqtt, false, "dev2").await;
    raw.send_v4(v4::Packet::Subscribe(v4::Subscribe::new(
        "command/dev2/req",
        QoS::AtLeastOnce,
    )))
    .await;
    assert!(matches!(raw.recv_v4().await, Some(v4::Packet::SubAck(_))));
    produce(&tansu.bootstrap, "dev2", "reboot", &[]).await;
    match raw.recv_v4().await {
        Some(v4::Packet::Publish(p)) => {
            assert_eq!(
                (p.topic.as_str(), p.qos),
                ("command/dev2/req", QoS::AtLeastOnce)
            )
        }
        other => panic!("expected the command, got {other:?}"),
    }

    // MQTT 5 request/response: dev3 gets the response topic and correlation data with the
    // command, and its reply goes up through the ordinary routes into Kafka with them.
    let mut dev3 = Raw::session(t.mqtt, true, "dev3").await;
    dev3.send_v5(v5::Packet::Subscribe(v5::Subscribe::new(
        v5::Filter::new("command/dev3/req", QoS5::AtLeastOnce),
        None,
    )))
    .await;
    assert!(matches!(dev3.recv_v5().await, Some(v5::Packet::SubAck(_))));
    produce(
        &tansu.bootstrap,
        "dev3",
        "status?",
        &[
            ("response-topic", b"command/dev3/res"),
            ("correlation-data", b"req-42"),
        ],
    )
    .await;
    let command = match dev3.recv_v5().await {
        Some(v5::Packet::Publish(p)) => p,
        other => panic!("expected dev3's command, got {other:?}"),
    };
    dev3.send_v5(v5::Packet::PubAck(v5::PubAck::new(command.pkid, None)))
        .await;
    let props = command.properties.expect("properties");
    let response_topic = props.response_topic.expect("a response topic");
    let mut reply = v5::Publish::new(response_topic, QoS5::AtLeastOnce, "ok", None);
    reply.pkid = 1;
    reply.properties = Some(v5::PublishProperties {
        correlation_data: props.correlation_data,
        user_properties: vec![("traceparent".into(), TRACEPARENT.into())],
        ..Default::default()
    });
    dev3.send_v5(v5::Packet::Publish(reply)).await;
    match dev3.recv_v5().await {
        Some(v5::Packet::PubAck(a)) => assert_eq!(a.reason, v5::PubAckReason::Success),
        other => panic!("expected the reply's PUBACK, got {other:?}"),
    }
    let responses = read(&tansu.bootstrap, "responses", 1, Duration::from_secs(20)).await;
    assert_eq!(responses.len(), 1, "{responses:?}");
    assert_eq!(
        responses[0].header("correlation-data").as_deref(),
        Some("req-42")
    );
    assert_eq!(
        responses[0].header("mqtt.topic").as_deref(),
        Some("command/dev3/res")
    );
    // W3C trace context crosses both ways: a Kafka header becomes a user property and back.
    assert_eq!(
        responses[0].header("traceparent").as_deref(),
        Some(TRACEPARENT)
    );

    let failures = read(
        &tansu.bootstrap,
        "command-failures",
        2,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(failures.len(), 2, "{failures:?}");
    let dev9 = failures
        .iter()
        .find(|r| r.key.as_deref() == Some(b"dev9"))
        .expect("dev9's failure");
    assert_eq!(
        dev9.header("barnabas.undelivered.status").as_deref(),
        Some("not-connected")
    );
    assert_eq!(dev9.header("correlation-data").as_deref(), Some("\u{9}"));
    let dev2 = failures
        .iter()
        .find(|r| r.key.as_deref() == Some(b"dev2"))
        .expect("dev2's failure");
    assert_eq!(
        dev2.header("barnabas.undelivered.status").as_deref(),
        Some("timed-out")
    );
    let metrics = t.proxy.metrics().encode();
    for status in ["not-connected", "timed-out"] {
        let line =
            format!("barnabas_undelivered_total{{route=\"commands\",status=\"{status}\"}} 1");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    t.proxy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_not_acknowledged_before_a_restart_is_delivered_again() {
    let tansu = Tansu::start();
    tansu.create_topic("commands", 1);
    tansu.create_topic("command-failures", 1);
    let routes = command_routes(&tansu.bootstrap).replace("ttl_ms: 2000", "ttl_ms: 30000");
    let t = TestProxy::start(&routes).await;

    let mut raw = subscribe_dev1(Raw::session(t.mqtt, true, "dev1").await).await;
    produce(&tansu.bootstrap, "dev1", "first", &[]).await;
    let first = match raw.recv_v5().await {
        Some(v5::Packet::Publish(p)) => p,
        other => panic!("expected the first command, got {other:?}"),
    };
    assert_eq!(&first.payload[..], b"first");
    raw.send_v5(v5::Packet::PubAck(v5::PubAck::new(first.pkid, None)))
        .await;
    produce(&tansu.bootstrap, "dev1", "second", &[]).await;
    let second = match raw.recv_v5().await {
        Some(v5::Packet::Publish(p)) => p,
        other => panic!("expected the second command, got {other:?}"),
    };
    assert_eq!(&second.payload[..], b"second");
    // No PUBACK for the second: the proxy stops with it under way.
    t.proxy.shutdown(Duration::from_secs(5)).await;

    let config = barnabas::Config::load(&t.path).unwrap();
    let proxy = barnabas::Proxy::start(config).await.unwrap();
    let mut raw =
        subscribe_dev1(Raw::session(proxy.mqtt_addr().unwrap(), true, "dev1").await).await;
    match tokio::time::timeout(Duration::from_secs(20), raw.recv_v5()).await {
        Ok(Some(v5::Packet::Publish(p))) => assert_eq!(
            &p.payload[..],
            b"second",
            "the acknowledged command is not sent again, the other one is"
        ),
        other => panic!("expected the second command again, got {other:?}"),
    }
    proxy.shutdown(Duration::from_secs(5)).await;
}

/// MQTT lines (`MSG ...`) a `mosquitto_sub` prints within `wait`.
async fn messages(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    wait: Duration,
) -> Vec<String> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("MSG ") {
                out.push(rest.to_string());
            }
        }
    })
    .await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_talk_through_kafka_with_the_example_routes() {
    let tansu = Tansu::start();
    tansu.create_topic("mqtt-messages", 1);
    let example = std::fs::read_to_string(
        barnabas_tests::repo_root().join("examples/mqtt-over-kafka/routes.yaml"),
    )
    .unwrap();
    let yaml = example.replace("127.0.0.1:1883", "127.0.0.1:0").replace(
        "kafka: { kind: kafka, bootstrap: embedded }",
        &format!(
            "kafka: {{ kind: kafka, bootstrap: \"{}\", options: {{ auto.offset.reset: earliest }} }}",
            tansu.bootstrap
        ),
    );
    assert!(yaml.contains(&tansu.bootstrap) && yaml.contains("127.0.0.1:0"));
    let t = TestProxy::start(&yaml).await;

    // One reader of the room at QoS 2; two members of a shared subscription at QoS 1.
    let (mut room, mut room_lines) = mosquitto_sub(
        t.mqtt,
        &[
            "-q",
            "2",
            "-i",
            "reader",
            "-t",
            "chat/#",
            "-F",
            "MSG %t|%q|%p",
        ],
    )
    .await;
    let (mut w1, mut w1_lines) = mosquitto_sub(
        t.mqtt,
        &[
            "-q",
            "1",
            "-i",
            "w1",
            "-t",
            "$share/workers/jobs/#",
            "-F",
            "MSG %p",
        ],
    )
    .await;
    let (mut w2, mut w2_lines) = mosquitto_sub(
        t.mqtt,
        &[
            "-q",
            "1",
            "-i",
            "w2",
            "-t",
            "$share/workers/jobs/#",
            "-F",
            "MSG %p",
        ],
    )
    .await;

    for qos in ["0", "1", "2"] {
        let message = format!("hello at {qos}");
        let (ok, out) = barnabas_tests::mqtt::mosquitto_pub(
            t.mqtt,
            &[
                "-q",
                qos,
                "-i",
                "writer",
                "-t",
                "chat/room1",
                "-m",
                &message,
            ],
        )
        .await;
        assert!(ok, "{out}");
    }
    for n in 0..10 {
        let message = format!("job {n}");
        let (ok, out) = barnabas_tests::mqtt::mosquitto_pub(
            t.mqtt,
            &["-q", "1", "-i", "boss", "-t", "jobs/build", "-m", &message],
        )
        .await;
        assert!(ok, "{out}");
    }

    let mut got = messages(&mut room_lines, Duration::from_secs(10)).await;
    got.sort();
    assert_eq!(
        got,
        [
            "chat/room1|0|hello at 0",
            "chat/room1|1|hello at 1",
            "chat/room1|2|hello at 2"
        ],
        "every message, at the QoS it was published with (the route and the reader allow 2)"
    );
    let one = messages(&mut w1_lines, Duration::from_secs(3)).await;
    let two = messages(&mut w2_lines, Duration::from_secs(1)).await;
    assert_eq!(
        one.len() + two.len(),
        10,
        "each job to one worker: {one:?} {two:?}"
    );
    assert!(
        !one.is_empty() && !two.is_empty(),
        "both workers get jobs: {one:?} {two:?}"
    );
    for child in [&mut room, &mut w1, &mut w2] {
        let _ = child.kill().await;
    }
    t.proxy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_on_two_instances_each_get_the_record() {
    let tansu = command_tansu();
    let routes = command_routes(&tansu.bootstrap);
    let a = TestProxy::start(&routes.replace("instance: test", "instance: a")).await;
    let b = TestProxy::start(&routes.replace("instance: test", "instance: b")).await;
    let args = [
        "-q",
        "1",
        "-i",
        "dev1",
        "-t",
        "command/dev1/req",
        "-F",
        "MSG %p",
    ];
    let (mut sub_a, mut lines_a) = mosquitto_sub(a.mqtt, &args).await;
    let (mut sub_b, mut lines_b) = mosquitto_sub(b.mqtt, &args).await;
    produce(&tansu.bootstrap, "dev1", "to everyone", &[]).await;
    assert_eq!(
        messages(&mut lines_a, Duration::from_secs(10)).await,
        ["to everyone"]
    );
    assert_eq!(
        messages(&mut lines_b, Duration::from_secs(1)).await,
        ["to everyone"]
    );
    let _ = sub_a.kill().await;
    let _ = sub_b.kill().await;
    a.proxy.shutdown(Duration::from_secs(5)).await;
    b.proxy.shutdown(Duration::from_secs(5)).await;
}

/// Connects as MQTT 5 `client_id` asking to keep the session for 300 s; returns the client and
/// whether CONNACK said a session was present.
async fn persistent(addr: std::net::SocketAddr, client_id: &str, clean: bool) -> (Raw, bool) {
    let mut raw = Raw::connect(addr, true).await;
    raw.send_v5(v5::Packet::Connect(
        v5::Connect {
            keep_alive: 30,
            client_id: client_id.into(),
            clean_start: clean,
            properties: Some(v5::ConnectProperties {
                session_expiry_interval: Some(300),
                ..Default::default()
            }),
        },
        None,
        None,
    ))
    .await;
    match raw.recv_v5().await {
        Some(v5::Packet::ConnAck(c)) => {
            assert_eq!(c.code, v5::ConnectReturnCode::Success);
            (raw, c.session_present)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_session_gets_what_came_while_it_was_away_and_what_it_left_unacknowledged() {
    let tansu = command_tansu();
    let routes = command_routes(&tansu.bootstrap).replace("ttl_ms: 2000", "ttl_ms: 30000");
    let t = TestProxy::start(&routes).await;

    let (mut dev, present) = persistent(t.mqtt, "dev5", true).await;
    assert!(!present, "a clean start has no session");
    dev.send_v5(v5::Packet::Subscribe(v5::Subscribe::new(
        v5::Filter::new("command/dev5/req", QoS5::AtLeastOnce),
        None,
    )))
    .await;
    assert!(matches!(dev.recv_v5().await, Some(v5::Packet::SubAck(_))));
    drop(dev);

    // Produced while dev5 is away: it waits in the session.
    produce(&tansu.bootstrap, "dev5", "while away", &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut dev, present) = persistent(t.mqtt, "dev5", false).await;
    assert!(present, "the session was kept");
    let first = match dev.recv_v5().await {
        Some(v5::Packet::Publish(p)) => p,
        other => panic!("expected the queued command, got {other:?}"),
    };
    assert_eq!(&first.payload[..], b"while away");
    assert!(!first.dup);
    // Not acknowledged: after a reconnect it comes again, marked duplicate.
    drop(dev);
    let (mut dev, present) = persistent(t.mqtt, "dev5", false).await;
    assert!(present);
    let again = match dev.recv_v5().await {
        Some(v5::Packet::Publish(p)) => p,
        other => panic!("expected the command again, got {other:?}"),
    };
    assert_eq!((&again.payload[..], again.dup), (&b"while away"[..], true));
    dev.send_v5(v5::Packet::PubAck(v5::PubAck::new(again.pkid, None)))
        .await;

    // A clean start ends the kept session: its subscription is gone with it.
    drop(dev);
    let (_dev, present) = persistent(t.mqtt, "dev5", true).await;
    assert!(!present);
    produce(&tansu.bootstrap, "dev5", "nobody", &[]).await;
    let failures = read(
        &tansu.bootstrap,
        "command-failures",
        1,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(&failures[0].payload[..], b"nobody");
    assert_eq!(
        failures[0].header("barnabas.undelivered.status").as_deref(),
        Some("not-connected")
    );
    t.proxy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_under_way_when_the_proxy_is_killed_is_delivered_after_its_restart() {
    let tansu = command_tansu();
    let port = barnabas_tests::free_low_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    let routes = command_routes(&tansu.bootstrap)
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        .replace("ttl_ms: 2000", "ttl_ms: 30000");
    std::fs::write(&config, routes).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let binary = barnabas_tests::proxy_binary();
    let proxy = barnabas_bench::peers::barnabas(&binary, &config, &listen).unwrap();

    let mut raw = subscribe_dev1(Raw::session(addr, true, "dev1").await).await;
    produce(&tansu.bootstrap, "dev1", "first", &[]).await;
    let first = match raw.recv_v5().await {
        Some(v5::Packet::Publish(p)) => p,
        other => panic!("expected the first command, got {other:?}"),
    };
    raw.send_v5(v5::Packet::PubAck(v5::PubAck::new(first.pkid, None)))
        .await;
    // Committed within a second of its acknowledgement.
    tokio::time::sleep(Duration::from_secs(3)).await;
    produce(&tansu.bootstrap, "dev1", "second", &[]).await;
    match raw.recv_v5().await {
        Some(v5::Packet::Publish(p)) => assert_eq!(&p.payload[..], b"second"),
        other => panic!("expected the second command, got {other:?}"),
    }
    // Killed (SIGKILL) with the second command unacknowledged.
    drop(proxy);
    drop(raw);

    let proxy = barnabas_bench::peers::barnabas(&binary, &config, &listen).unwrap();
    let mut raw = subscribe_dev1(Raw::session(addr, true, "dev1").await).await;
    // The restarted reader takes its partition back (at once as a static group member; within
    // the session timeout on a broker without static membership).
    let mut again = raw.recv_v5().await;
    if again.is_none() {
        again = raw.recv_v5().await;
    }
    match again {
        Some(v5::Packet::Publish(p)) => assert_eq!(
            &p.payload[..],
            b"second",
            "the acknowledged command is not sent again, the other one is"
        ),
        other => panic!("expected the second command again, got {other:?}"),
    }
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hono_style_commands_for_3_1_1_devices_with_the_example_routes() {
    let tansu = Tansu::start();
    for topic in ["command", "command-failures", "command-responses"] {
        tansu.create_topic(topic, 1);
    }
    let example =
        std::fs::read_to_string(barnabas_tests::repo_root().join("examples/hono/routes.yaml"))
            .unwrap();
    let yaml = example
        .replace("127.0.0.1:1883", "127.0.0.1:0")
        .replace(
            "../../plugins/dist/hono-command.wasm",
            &barnabas_tests::plugin("hono-command").display().to_string(),
        )
        .replace(
            "kafka: { kind: kafka, bootstrap: embedded }",
            &format!(
                "kafka: {{ kind: kafka, bootstrap: \"{}\", options: {{ auto.offset.reset: earliest }} }}",
                tansu.bootstrap
            ),
        );
    assert!(yaml.contains(&tansu.bootstrap) && yaml.contains("127.0.0.1:0"));
    let t = TestProxy::start(&yaml).await;

    // A 3.1.1 device gets the command with the request id and the name in the topic.
    let (mut sub, mut lines) = mosquitto_sub(
        t.mqtt,
        &[
            "-q",
            "1",
            "-i",
            "dev1",
            "-t",
            "command//dev1/req/#",
            "-F",
            "MSG %t|%p",
        ],
    )
    .await;
    let produce_to = |topic: &'static str,
                      key: &'static str,
                      payload: &'static str,
                      headers: Vec<(&'static str, &'static str)>| {
        let bootstrap = tansu.bootstrap.clone();
        async move {
            let producer: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()
                .unwrap();
            let mut h = OwnedHeaders::new();
            for (name, value) in headers {
                h = h.insert(Header {
                    key: name,
                    value: Some(value),
                });
            }
            producer
                .send(
                    FutureRecord::to(topic).key(key).payload(payload).headers(h),
                    Duration::from_secs(10),
                )
                .await
                .expect("produced");
        }
    };
    produce_to(
        "command",
        "dev1",
        "now",
        vec![("correlation-data", "42"), ("subject", "reboot")],
    )
    .await;
    assert_eq!(
        messages(&mut lines, Duration::from_secs(10))
            .await
            .first()
            .map(String::as_str),
        Some("command//dev1/req/42/reboot|now")
    );
    let _ = sub.kill().await;

    // Its answer reaches Kafka keyed by the device, with the request id and the status.
    let (ok, out) = barnabas_tests::mqtt::mosquitto_pub(
        t.mqtt,
        &[
            "-q",
            "1",
            "-i",
            "dev1",
            "-t",
            "command//dev1/res/42/200",
            "-m",
            "done",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let responses = read(
        &tansu.bootstrap,
        "command-responses",
        1,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(responses.len(), 1, "{responses:?}");
    assert_eq!(responses[0].key.as_deref(), Some(&b"dev1"[..]));
    assert_eq!(
        responses[0].header("correlation-data").as_deref(),
        Some("42")
    );
    assert_eq!(responses[0].header("status").as_deref(), Some("200"));

    // A command without a name reaches nobody: it is reported, rejected by the plugin.
    produce_to("command", "dev1", "now", vec![("correlation-data", "43")]).await;
    let failures = read(
        &tansu.bootstrap,
        "command-failures",
        1,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(
        failures[0].header("barnabas.undelivered.status").as_deref(),
        Some("rejected")
    );
    t.proxy.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_gets_one_partition_in_order() {
    let tansu = command_tansu();
    let t = TestProxy::start(&command_routes(&tansu.bootstrap)).await;
    let (mut sub, mut lines) = mosquitto_sub(
        t.mqtt,
        &[
            "-q",
            "1",
            "-i",
            "dev1",
            "-t",
            "command/dev1/req",
            "-F",
            "MSG %p",
        ],
    )
    .await;
    // 300 records in flight at once, all for one partition.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &tansu.bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let payloads: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    let mut sends = Vec::new();
    for payload in &payloads {
        let record = FutureRecord::to("commands").key("dev1").payload(payload);
        match producer.send_result(record) {
            Ok(send) => sends.push(send),
            Err((e, _)) => panic!("not queued: {e}"),
        }
    }
    for send in sends {
        send.await.expect("delivered").expect("produced");
    }
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < 300 && tokio::time::Instant::now() < deadline {
        got.extend(messages(&mut lines, Duration::from_secs(2)).await);
    }
    assert_eq!(got, payloads, "every record once, in partition order");
    let _ = sub.kill().await;
    t.proxy.shutdown(Duration::from_secs(5)).await;
}
