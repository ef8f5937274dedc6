//! One identity model for MQTT and AMQP: the `auth:` section's users log in over both protocols,
//! anonymous clients are refused when `anonymous: false`, and the ACL decides what each identity
//! may publish, before any plugin or broker sees the message.

use std::time::Duration;

use barnabas_tests::mqtt::{Raw, mosquitto_pub};
use barnabas_tests::{TestProxy, read, routes, scrape, topic_size};
use rdkafka::mocking::MockCluster;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

/// alice's password is "secret", bob's "hunter2"; `backend` may publish anywhere, everyone else
/// only under `telemetry/<their name>/`.
fn config(bootstrap: &str) -> String {
    routes(
        r##"
listeners:
  mqtt: { bind: "127.0.0.1:0" }
  amqp: { bind: "127.0.0.1:0" }
admin: { bind: "127.0.0.1:0" }
auth:
  anonymous: false
  users:
    alice: "$argon2id$v=19$m=19456,t=2,p=1$JuuwxA74eh8o1Z7tDoMAIg$mL8KcP90n05JK/2Tg6Uwg7OYP4bEV0rafUmxqkDZ2wE"
    bob: "$argon2id$v=19$m=19456,t=2,p=1$dswUvszKLqOKt7vfadfhsQ$Dg8wAS2MQ7T3GYnHwlRuqwtcRu2nkMKZzrWfoKQ1W/U"
  acl:
    - identity: bob
      publish: ["#"]
    - identity: "*"
      publish: ["telemetry/%u/#"]
destinations:
  kafka: { kind: kafka, bootstrap: "{bootstrap}", options: { linger.ms: 0 } }
routes:
  - { name: t, from: "mqtt:telemetry/#", to: "kafka:telemetry" }
  - { name: a, from: "amqp:telemetry/#", to: "kafka:telemetry" }
"##,
        bootstrap,
    )
}

/// `mosquitto_pub -V mqttv5 -q 1` as `user`, with `extra` arguments.
async fn pub_as(
    t: &TestProxy,
    (user, password): (&str, &str),
    topic: &str,
    message: &str,
    extra: &[&str],
) -> (bool, String) {
    let mut args = vec![
        "-V", "mqttv5", "-q", "1", "-u", user, "-P", password, "-t", topic, "-m", message,
    ];
    args.extend_from_slice(extra);
    mosquitto_pub(t.mqtt, &args).await
}

/// A raw MQTT 5 CONNECT with `login`; the CONNACK's reason code.
async fn connack_v5(t: &TestProxy, login: Option<(&str, &str)>) -> v5::ConnectReturnCode {
    let mut raw = Raw::connect(t.mqtt, true).await;
    raw.send_v5(v5::Packet::Connect(
        v5::Connect {
            keep_alive: 30,
            client_id: "raw5".into(),
            clean_start: true,
            properties: None,
        },
        None,
        login.map(|(u, p)| v5::Login::new(u, p)),
    ))
    .await;
    match raw.recv_v5().await {
        Some(v5::Packet::ConnAck(c)) => c.code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// The same over 3.1.1.
async fn connack_v4(t: &TestProxy, login: Option<(&str, &str)>) -> v4::ConnectReturnCode {
    let mut raw = Raw::connect(t.mqtt, false).await;
    let mut connect = v4::Connect::new("raw4");
    if let Some((u, p)) = login {
        connect.set_login(u, p);
    }
    raw.send_v4(v4::Packet::Connect(connect)).await;
    match raw.recv_v4().await {
        Some(v4::Packet::ConnAck(c)) => c.code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_logins_are_checked_and_refused_with_their_codes() {
    let kafka = MockCluster::new(1).unwrap();
    let t = TestProxy::start(&config(&kafka.bootstrap_servers())).await;

    use v5::ConnectReturnCode as C5;
    assert_eq!(connack_v5(&t, Some(("alice", "secret"))).await, C5::Success);
    assert_eq!(
        connack_v5(&t, Some(("alice", "wrong"))).await,
        C5::BadUserNamePassword
    );
    assert_eq!(
        connack_v5(&t, Some(("mallory", "x"))).await,
        C5::BadUserNamePassword
    );
    assert_eq!(connack_v5(&t, None).await, C5::NotAuthorized);

    use v4::ConnectReturnCode as C4;
    assert_eq!(connack_v4(&t, Some(("bob", "hunter2"))).await, C4::Success);
    assert_eq!(
        connack_v4(&t, Some(("bob", "wrong"))).await,
        C4::BadUserNamePassword
    );
    assert_eq!(connack_v4(&t, None).await, C4::NotAuthorized);

    // mosquitto's own client, as a user would run it.
    let (ok, out) = pub_as(&t, ("alice", "wrong"), "telemetry/alice/x", "hi", &[]).await;
    assert!(!ok, "{out}");
    assert!(
        out.to_lowercase().contains("bad user name or password"),
        "{out}"
    );

    let m = scrape(t.proxy.admin_addr().unwrap()).await;
    assert_eq!(
        m.value("barnabas_logins_total", &[("result", "accepted")]),
        2.0
    );
    assert_eq!(
        m.value("barnabas_logins_total", &[("result", "refused")]),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_decides_what_each_identity_publishes() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let t = TestProxy::start(&config(&bootstrap)).await;

    // MQTT 5: alice under her own name is delivered; under bob's she gets 0x87.
    let (ok, out) = pub_as(&t, ("alice", "secret"), "telemetry/alice/x", "mine", &[]).await;
    assert!(ok, "{out}");
    let mut raw = Raw::connect(t.mqtt, true).await;
    raw.send_v5(v5::Packet::Connect(
        v5::Connect {
            keep_alive: 30,
            client_id: "alice5".into(),
            clean_start: true,
            properties: None,
        },
        None,
        Some(v5::Login::new("alice", "secret")),
    ))
    .await;
    assert!(matches!(raw.recv_v5().await, Some(v5::Packet::ConnAck(_))));
    raw.send_v5(barnabas_tests::mqtt::publish5(
        "telemetry/bob/x",
        1,
        1,
        b"spoof",
        None,
    ))
    .await;
    match raw.recv_v5().await {
        Some(v5::Packet::PubAck(a)) => assert_eq!(a.reason, v5::PubAckReason::NotAuthorized),
        other => panic!("expected PUBACK 0x87, got {other:?}"),
    }

    // 3.1.1 cannot be told: the PUBACK comes and the message is discarded.
    let mut raw4 = Raw::connect(t.mqtt, false).await;
    let mut connect = v4::Connect::new("alice4");
    connect.set_login("alice", "secret");
    raw4.send_v4(v4::Packet::Connect(connect)).await;
    assert!(matches!(raw4.recv_v4().await, Some(v4::Packet::ConnAck(_))));
    raw4.send_v4(barnabas_tests::mqtt::publish4(
        "telemetry/bob/y",
        1,
        7,
        b"spoof",
    ))
    .await;
    match raw4.recv_v4().await {
        Some(v4::Packet::PubAck(a)) => assert_eq!(a.pkid, 7),
        other => panic!("expected PUBACK, got {other:?}"),
    }

    // A will under someone else's name is refused at CONNECT.
    let (ok, out) = pub_as(
        &t,
        ("alice", "secret"),
        "telemetry/alice/x",
        "w",
        &["--will-topic", "telemetry/bob/gone", "--will-payload", "x"],
    )
    .await;
    assert!(!ok, "{out}");

    // bob may publish anywhere a route takes.
    let (ok, out) = pub_as(&t, ("bob", "hunter2"), "telemetry/alice/y", "bob's", &[]).await;
    assert!(ok, "{out}");

    let records = read(&bootstrap, "telemetry", 2, Duration::from_secs(10)).await;
    let mut payloads: Vec<_> = records.iter().map(|r| r.payload.clone()).collect();
    payloads.sort();
    assert_eq!(payloads, vec![b"bob's".to_vec(), b"mine".to_vec()]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        tokio::task::spawn_blocking(move || topic_size(&bootstrap, "telemetry"))
            .await
            .unwrap(),
        2,
        "nothing denied reached Kafka"
    );
    let m = scrape(t.proxy.admin_addr().unwrap()).await;
    assert_eq!(
        m.value("barnabas_acl_denied_total", &[("listener", "mqtt")]),
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_logs_in_against_the_same_users() {
    let kafka = MockCluster::new(1).unwrap();
    let t = TestProxy::start(&config(&kafka.bootstrap_servers())).await;
    let addr = t.proxy.amqp_addr().unwrap();
    let ok =
        fe2o3_amqp::Connection::open("bob", format!("amqp://bob:hunter2@{addr}").as_str()).await;
    assert!(ok.is_ok(), "{:?}", ok.err());
    let refused =
        fe2o3_amqp::Connection::open("bob", format!("amqp://bob:wrong@{addr}").as_str()).await;
    assert!(refused.is_err());
    // Without credentials fe2o3 skips SASL, which anonymous: false does not allow.
    let anonymous = fe2o3_amqp::Connection::open("anon", format!("amqp://{addr}").as_str()).await;
    assert!(anonymous.is_err());
}

/// Every record carries the identity its client logged in as, in `barnabas.identity`; headers a
/// client sends under the proxy's own names (`barnabas.*`, `mqtt.*`, `amqp.*`) never reach Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_travels_and_cannot_be_spoofed() {
    use fe2o3_amqp::{Connection, Sender, Session};

    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let t = TestProxy::start(&config(&bootstrap)).await;

    let (ok, out) = pub_as(
        &t,
        ("alice", "secret"),
        "telemetry/alice/x",
        "from-mqtt",
        &[
            "-i",
            "dev-1",
            "-D",
            "publish",
            "user-property",
            "barnabas.identity",
            "bob",
            "-D",
            "publish",
            "user-property",
            "mqtt.client-id",
            "someone-else",
            "-D",
            "publish",
            "user-property",
            "site",
            "plant-7",
        ],
    )
    .await;
    assert!(ok, "{out}");

    // AMQP: alice may not attach under bob's name; under her own she may, and her spoofed
    // application property is dropped.
    let addr = t.proxy.amqp_addr().unwrap();
    let mut connection =
        Connection::open("alice-app", format!("amqp://alice:secret@{addr}").as_str())
            .await
            .unwrap();
    let mut session = Session::begin(&mut connection).await.unwrap();
    let denied = Sender::attach(&mut session, "denied", "telemetry/bob/x").await;
    let denied_error = match denied {
        Ok(mut s) => s.send("x").await.err().map(|e| format!("{e:?}")),
        Err(e) => Some(format!("{e:?}")),
    };
    assert!(
        denied_error
            .as_deref()
            .is_some_and(|e| e.contains("UnauthorizedAccess")),
        "{denied_error:?}"
    );
    // A connection of its own: fe2o3's client may still write the transfer above after it
    // answered the detach, which the proxy rightly treats as a transfer on an unattached link
    // and closes that connection for.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), connection.close()).await;
    let mut connection = Connection::open(
        "alice-app-2",
        format!("amqp://alice:secret@{addr}").as_str(),
    )
    .await
    .unwrap();
    let mut session = Session::begin(&mut connection).await.unwrap();
    let mut sender = Sender::attach(&mut session, "mine", "telemetry/alice/y")
        .await
        .unwrap();
    let message = fe2o3_amqp::types::messaging::Message::builder()
        .application_properties(
            fe2o3_amqp::types::messaging::ApplicationProperties::builder()
                .insert("barnabas.identity", "bob")
                .insert("amqp.client-id", "someone-else")
                .build(),
        )
        .value("from-amqp")
        .build();
    let outcome = sender.send(message).await.unwrap();
    assert!(outcome.is_accepted(), "{outcome:?}");
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), sender.close()).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), session.end()).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), connection.close()).await;

    let records = read(&bootstrap, "telemetry", 2, Duration::from_secs(10)).await;
    assert_eq!(records.len(), 2);
    for r in &records {
        let named = |n: &str| r.headers.iter().filter(|(h, _)| h == n).count();
        assert_eq!(
            r.header("barnabas.identity").as_deref(),
            Some("alice"),
            "{r:?}"
        );
        assert_eq!(named("barnabas.identity"), 1, "{r:?}");
        assert_eq!(
            named("mqtt.client-id") + named("amqp.client-id"),
            1,
            "{r:?}"
        );
        assert!(
            r.headers
                .iter()
                .all(|(_, v)| v != b"bob" && v != b"someone-else"),
            "{r:?}"
        );
    }
    let mqtt = records
        .iter()
        .find(|r| r.payload == b"from-mqtt")
        .expect("the MQTT record");
    assert_eq!(mqtt.header("mqtt.client-id").as_deref(), Some("dev-1"));
    assert_eq!(mqtt.header("site").as_deref(), Some("plant-7"));
    let m = scrape(t.proxy.admin_addr().unwrap()).await;
    assert_eq!(
        m.value("barnabas_acl_denied_total", &[("listener", "amqp")]),
        1.0
    );
}

/// A reload that removes a user closes that user's connections, MQTT and AMQP; other users stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_user_closes_its_connections() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let t = TestProxy::start(&config(&bootstrap)).await;

    let connect = |user: &'static str, password: &'static str| {
        let addr = t.mqtt;
        async move {
            let mut raw = Raw::connect(addr, true).await;
            raw.send_v5(v5::Packet::Connect(
                v5::Connect {
                    keep_alive: 30,
                    client_id: format!("{user}-device"),
                    clean_start: true,
                    properties: None,
                },
                None,
                Some(v5::Login::new(user, password)),
            ))
            .await;
            match raw.recv_v5().await {
                Some(v5::Packet::ConnAck(c)) => assert_eq!(c.code, v5::ConnectReturnCode::Success),
                other => panic!("expected CONNACK, got {other:?}"),
            }
            raw
        }
    };
    let mut alice = connect("alice", "secret").await;
    let mut bob = connect("bob", "hunter2").await;
    let addr = t.proxy.amqp_addr().unwrap();
    let mut bob_amqp =
        fe2o3_amqp::Connection::open("bob-app", format!("amqp://bob:hunter2@{addr}").as_str())
            .await
            .unwrap();

    // bob's line goes from the file; the reload applies it.
    let text = std::fs::read_to_string(&t.path).unwrap();
    let without_bob: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("bob:"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&t.path, without_bob).unwrap();
    let outcome = t.proxy.reload().await;
    assert!(format!("{outcome:?}").contains("Applied"), "{outcome:?}");

    match bob.recv_v5().await {
        Some(v5::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, v5::DisconnectReasonCode::NotAuthorized)
        }
        other => panic!("expected DISCONNECT 0x87 for bob, got {other:?}"),
    }
    assert!(bob.closed().await, "bob's MQTT connection is closed");
    let amqp_closed = tokio::time::timeout(Duration::from_secs(5), bob_amqp.on_close()).await;
    assert!(amqp_closed.is_ok(), "bob's AMQP connection is closed");
    // alice is still served.
    alice
        .send_v5(barnabas_tests::mqtt::publish5(
            "telemetry/alice/z",
            1,
            1,
            b"still",
            None,
        ))
        .await;
    assert!(matches!(alice.recv_v5().await, Some(v5::Packet::PubAck(_))));
    // And bob cannot log in again.
    assert_eq!(
        connack_v5(&t, Some(("bob", "hunter2"))).await,
        v5::ConnectReturnCode::BadUserNamePassword
    );
}

/// Plugin contract 0.2: a plugin asks for the headers and the source of its message, and sees
/// the identity the client logged in as; what its output does not change stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_see_the_identity_source_and_headers() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let yaml = routes(
        r##"
listeners:
  mqtt: { bind: "127.0.0.1:0" }
auth:
  users:
    alice: "$argon2id$v=19$m=19456,t=2,p=1$JuuwxA74eh8o1Z7tDoMAIg$mL8KcP90n05JK/2Tg6Uwg7OYP4bEV0rafUmxqkDZ2wE"
destinations:
  kafka: { kind: kafka, bootstrap: "{bootstrap}", options: { linger.ms: 0 } }
plugins:
  device-key: { wasm: "{plugin:device-key}" }
  inspect: { wasm: "{plugin:inspect}" }
  inspect-clear: { wasm: "{plugin:inspect}", config: { clear_key: true } }
routes:
  - { name: keyed, from: "mqtt:keyed/+", plugins: [device-key, inspect], to: "kafka:inspected" }
  - { name: unkeyed, from: "mqtt:unkeyed/+", plugins: [device-key, inspect-clear], to: "kafka:inspected" }
"##,
        &bootstrap,
    );
    let t = TestProxy::start(&yaml).await;
    for (topic, login) in [("keyed/dev1", true), ("unkeyed/dev2", false)] {
        let mut args = vec![
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-i",
            "inspector",
            "-t",
            topic,
            "-m",
            "{}",
            "-D",
            "publish",
            "user-property",
            "tenant",
            "acme",
            "-D",
            "publish",
            "user-property",
            "remove-me",
            "x",
        ];
        if login {
            args.extend(["-u", "alice", "-P", "secret"]);
        }
        let (ok, out) = mosquitto_pub(t.mqtt, &args).await;
        assert!(ok, "{out}");
    }
    let mut records = read(&bootstrap, "inspected", 2, Duration::from_secs(20)).await;
    records.sort_by_key(|r| r.header("seen-route"));
    assert_eq!(records.len(), 2);
    let keyed = &records[0];
    assert_eq!(keyed.header("seen-route").as_deref(), Some("keyed"));
    assert_eq!(keyed.header("seen-identity").as_deref(), Some("alice"));
    assert_eq!(keyed.header("seen-protocol").as_deref(), Some("mqtt"));
    assert_eq!(keyed.header("seen-direction").as_deref(), Some("inbound"));
    assert_eq!(keyed.header("seen-client-id").as_deref(), Some("inspector"));
    assert_eq!(keyed.header("seen-tenant").as_deref(), Some("acme"));
    // Headers the plugin did not touch are kept; the one it removed is gone.
    assert_eq!(keyed.header("tenant").as_deref(), Some("acme"));
    assert_eq!(keyed.header("remove-me"), None);
    assert_eq!(keyed.key.as_deref(), Some(&b"dev1"[..]));
    assert_eq!(keyed.payload, b"{}");
    let unkeyed = &records[1];
    assert_eq!(unkeyed.header("seen-identity").as_deref(), Some("-"));
    assert_eq!(unkeyed.key, None);
}
