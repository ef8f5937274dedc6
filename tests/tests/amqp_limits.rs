//! Bounds on the AMQP side: the listener's sessions per connection, links per session and
//! silence, and an AMQP destination that gets no link credit.

use std::time::{Duration, Instant};

use barnabas_tests::amqp::{raw_frame, raw_open};
use barnabas_tests::mqtt::{Ack, publish_v5};
use barnabas_tests::{TestProxy, routes};
use fe2o3_amqp::types::performatives::{Begin, Open};
use rdkafka::mocking::MockCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The proxy tells a client `channel-max` and `handle-max` one less than its `channel_max` and
/// `handle_max`, announces its idle timeout, and closes a connection that goes silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_listener_bounds_sessions_links_and_silence() {
    let kafka = MockCluster::new(1).unwrap();
    let yaml = routes(
        r#"
listeners:
  mqtt: { bind: "127.0.0.1:0" }
  amqp: { bind: "127.0.0.1:0", channel_max: 2, handle_max: 3, idle_timeout_ms: 1000 }
destinations:
  kafka: { kind: kafka, bootstrap: "{bootstrap}" }
routes:
  - { name: r, from: "amqp:#", to: "kafka:out" }
"#,
        &kafka.bootstrap_servers(),
    );
    let t = TestProxy::start(&yaml).await;
    let addr = t.proxy.amqp_addr().unwrap();

    let open = raw_open("quiet");
    let begin = Begin {
        remote_channel: None,
        next_outgoing_id: 0,
        incoming_window: 100,
        outgoing_window: 100,
        handle_max: 100.into(),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    };
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = b"AMQP\x00\x01\x00\x00".to_vec();
    out.extend(raw_frame(&open, &[]));
    out.extend(raw_frame(&begin, &[]));
    socket.write_all(&out).await.unwrap();

    let mut header = [0u8; 8];
    socket.read_exact(&mut header).await.unwrap();
    let (mut their_open, mut their_begin) = (None, None);
    while their_open.is_none() || their_begin.is_none() {
        let mut head = [0u8; 8];
        socket.read_exact(&mut head).await.unwrap();
        let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let mut body = vec![0u8; size - 8];
        socket.read_exact(&mut body).await.unwrap();
        match body.get(2) {
            Some(0x10) => their_open = Some(serde_amqp::from_slice::<Open>(&body).unwrap()),
            Some(0x11) => their_begin = Some(serde_amqp::from_slice::<Begin>(&body).unwrap()),
            _ => {}
        }
    }
    let (their_open, their_begin) = (their_open.unwrap(), their_begin.unwrap());
    assert_eq!(their_open.channel_max.0, 1);
    assert!(their_open.idle_time_out.is_some(), "{their_open:?}");
    assert_eq!(their_begin.handle_max.0, 2);

    // Now silence: the proxy closes the connection after its idle timeout.
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a silent connection was kept open");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// An AMQP destination whose broker grants no link credit (here another proxy whose only credit is
/// held by a message its own Kafka cannot take) fails each record at its `timeout_ms`, released
/// to the client, instead of waiting for credit forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_destination_gives_up_without_credit() {
    let kafka = MockCluster::new(1).unwrap();
    let stuck = routes(
        r#"
listeners:
  mqtt: { bind: "127.0.0.1:0" }
  amqp: { bind: "127.0.0.1:0", credit: 1 }
destinations:
  kafka: { kind: kafka, bootstrap: "{bootstrap}", options: { message.timeout.ms: 60000 } }
routes:
  - { name: r, from: "amqp:#", to: "kafka:held" }
"#,
        &kafka.bootstrap_servers(),
    );
    let broker = TestProxy::start(&stuck).await;
    kafka.broker_down(1).unwrap();
    let front = format!(
        r#"
listeners:
  mqtt: {{ bind: "127.0.0.1:0" }}
destinations:
  broker: {{ kind: amqp, url: "amqp://{}", timeout_ms: 1500 }}
routes:
  - {{ name: r, from: "mqtt:#", to: "broker:q" }}
"#,
        broker.proxy.amqp_addr().unwrap()
    );
    let t = TestProxy::start(&front).await;
    let started = Instant::now();
    let (a, b) = tokio::join!(
        publish_v5(t.mqtt, "a", "x", 1, b"first", None),
        publish_v5(t.mqtt, "b", "x", 1, b"second", None),
    );
    for ack in [a, b] {
        assert!(
            matches!(ack, Ack::Acked { code: 0x80, .. }),
            "expected a retriable failure, got {ack:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "answered after {:?}",
        started.elapsed()
    );
}

/// After ten wrong passwords from one address, its logins are refused with `sys-temp` before the
/// password is checked (the right one too), until a second has given it a try back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_wrong_logins_are_throttled_per_address() {
    use barnabas_tests::scrape;
    use fe2o3_amqp::connection::OpenError;
    use fe2o3_amqp::types::sasl::SaslCode;

    let kafka = MockCluster::new(1).unwrap();
    // alice's password is "secret".
    let yaml = routes(
        r#"
listeners:
  mqtt: { bind: "127.0.0.1:0" }
  amqp: { bind: "127.0.0.1:0" }
auth:
  anonymous: false
  users: { alice: "$argon2id$v=19$m=19456,t=2,p=1$JuuwxA74eh8o1Z7tDoMAIg$mL8KcP90n05JK/2Tg6Uwg7OYP4bEV0rafUmxqkDZ2wE" }
admin: { bind: "127.0.0.1:0" }
destinations:
  kafka: { kind: kafka, bootstrap: "{bootstrap}" }
routes:
  - { name: r, from: "amqp:#", to: "kafka:out" }
"#,
        &kafka.bootstrap_servers(),
    );
    let t = TestProxy::start(&yaml).await;
    let addr = t.proxy.amqp_addr().unwrap();
    let login = |password: &'static str| async move {
        let url = format!("amqp://alice:{password}@{addr}");
        fe2o3_amqp::Connection::open("guesser", url.as_str()).await
    };
    let sasl_code = |r: Result<fe2o3_amqp::connection::ConnectionHandle<()>, OpenError>| match r {
        Err(OpenError::SaslError { code, .. }) => Some(code),
        Err(other) => panic!("not a SASL outcome: {other:?}"),
        Ok(mut c) => {
            tokio::spawn(async move { c.close().await });
            None
        }
    };

    // Wrong guesses until the right password is refused too. Each check takes tens of
    // milliseconds (more on a loaded machine), and a try is earned back every second meanwhile,
    // so it takes at least ten; the right password, tried after each, shows when it happens.
    let mut wrong = 0u32;
    let mut accepted = 0u32;
    loop {
        assert_eq!(sasl_code(login("wrong").await), Some(SaslCode::Auth));
        wrong += 1;
        match sasl_code(login("secret").await) {
            None => accepted += 1,
            Some(SaslCode::SysTemp) => break,
            other => panic!("the right password got {other:?}"),
        }
        assert!(wrong < 100, "never throttled");
    }
    let throttled_at = Instant::now();
    assert!(wrong >= 10, "throttled after {wrong} failures");
    let m = scrape(t.proxy.admin_addr().unwrap()).await;
    assert_eq!(
        m.value("barnabas_logins_total", &[("result", "refused")]),
        f64::from(wrong)
    );
    assert_eq!(
        m.value("barnabas_logins_total", &[("result", "accepted")]),
        f64::from(accepted)
    );
    assert_eq!(
        m.value("barnabas_logins_total", &[("result", "throttled")]),
        1.0
    );

    // One try comes back per second.
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(throttled_at.elapsed())).await;
    assert_eq!(
        sasl_code(login("secret").await),
        None,
        "logged in after the pause"
    );
}
