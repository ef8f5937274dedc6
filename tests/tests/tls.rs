//! TLS and WebSocket listeners with real clients: mosquitto over TLS with a password and with a
//! client certificate (its CN the identity), a listener that requires certificates, Qpid Proton
//! over `amqps` with PLAIN and with EXTERNAL, paho-mqtt over WebSocket with and without TLS, and
//! certificates rotated under load. Certificates are made by the tests (rcgen).

use std::path::Path;
use std::time::Duration;

use barnabas_bench::pki::{Issued, Pki, Validity};
use barnabas_tests::amqp::proton_send_with;
use barnabas_tests::mqtt::mosquitto_pub;
use barnabas_tests::{TestProxy, read, routes, scrape, topic_size};
use rdkafka::mocking::MockCluster;
use serde_json::json;

/// alice's password is "secret". Everyone publishes under `telemetry/<identity>/`.
fn config(bootstrap: &str, dir: &Path, extra_listeners: &str) -> String {
    routes(
        &format!(
            r##"
listeners:
  mqtt: {{ bind: "127.0.0.1:0" }}
  mqtts:
    protocol: mqtt
    bind: "127.0.0.1:0"
    tls: {{ cert: {dir}/server.pem, key: {dir}/server.key, client_ca: {dir}/ca.pem, client_auth: optional }}
  mtls:
    protocol: mqtt
    bind: "127.0.0.1:0"
    tls: {{ cert: {dir}/server.pem, key: {dir}/server.key, client_ca: {dir}/ca.pem, client_auth: required }}
{extra_listeners}
admin: {{ bind: "127.0.0.1:0" }}
auth:
  anonymous: false
  users:
    alice: "$argon2id$v=19$m=19456,t=2,p=1$JuuwxA74eh8o1Z7tDoMAIg$mL8KcP90n05JK/2Tg6Uwg7OYP4bEV0rafUmxqkDZ2wE"
  client_certs: {{ identity: cn }}
  acl:
    - identity: "*"
      publish: ["telemetry/%u/#"]
destinations:
  kafka: {{ kind: kafka, bootstrap: "{{bootstrap}}", options: {{ linger.ms: 0 }} }}
routes:
  - {{ name: t, from: "mqtt:telemetry/#", to: "kafka:telemetry" }}
  - {{ name: a, from: "amqp:telemetry/#", to: "kafka:telemetry" }}
"##,
            dir = dir.display()
        ),
        bootstrap,
    )
}

/// A CA, the server's certificate and client certificates for `dev1` and `dev2`.
fn pki(dir: &Path) -> (Pki, Issued, Issued) {
    let pki = Pki::new(dir, "barnabas test CA").unwrap();
    pki.server("server", Validity::default()).unwrap();
    let dev1 = pki.client("dev1", "dev1").unwrap();
    let dev2 = pki.client("dev2", "dev2").unwrap();
    (pki, dev1, dev2)
}

fn arg(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_logs_in_by_password_or_client_certificate() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (pki, dev1, _) = pki(dir.path());
    let t = TestProxy::start(&config(&bootstrap, dir.path(), "")).await;
    let mqtts = t.proxy.listener_addr("mqtts").unwrap();
    let mtls = t.proxy.listener_addr("mtls").unwrap();
    let ca = arg(&pki.ca());
    let (cert, key) = (arg(&dev1.cert), arg(&dev1.key));

    // A password over TLS.
    let (ok, out) = mosquitto_pub(
        mqtts,
        &[
            "--cafile",
            &ca,
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-u",
            "alice",
            "-P",
            "secret",
            "-t",
            "telemetry/alice/x",
            "-m",
            "by password",
        ],
    )
    .await;
    assert!(ok, "{out}");
    // A wrong one is refused as over TCP.
    let (ok, out) = mosquitto_pub(
        mqtts,
        &[
            "--cafile",
            &ca,
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-u",
            "alice",
            "-P",
            "wrong",
            "-t",
            "telemetry/alice/x",
            "-m",
            "no",
        ],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.to_lowercase().contains("bad user name or password"),
        "{out}"
    );

    // A client certificate: its CN is the identity, no password needed, on both listeners.
    for addr in [mqtts, mtls] {
        let (ok, out) = mosquitto_pub(
            addr,
            &[
                "--cafile",
                &ca,
                "--cert",
                &cert,
                "--key",
                &key,
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-t",
                "telemetry/dev1/x",
                "-m",
                "by certificate",
            ],
        )
        .await;
        assert!(ok, "{out}");
    }
    // ... and the ACL applies to that identity: dev1 may not publish as alice (v5 PUBACK 0x87).
    let (ok, out) = mosquitto_pub(
        mqtts,
        &[
            "--cafile",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "telemetry/alice/x",
            "-m",
            "spoof",
            "-d",
        ],
    )
    .await;
    assert!(out.contains("RC:135"), "{ok} {out}");

    // Without a certificate the `required` listener fails the handshake; other clients carry on.
    let (ok, out) = mosquitto_pub(
        mtls,
        &[
            "--cafile",
            &ca,
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-u",
            "alice",
            "-P",
            "secret",
            "-t",
            "telemetry/alice/x",
            "-m",
            "no certificate",
        ],
    )
    .await;
    assert!(!ok, "{out}");
    // Plain MQTT on a TLS port is not a TLS handshake either.
    let (ok, out) = mosquitto_pub(
        mqtts,
        &[
            "-u",
            "alice",
            "-P",
            "secret",
            "-t",
            "telemetry/alice/x",
            "-m",
            "plain",
        ],
    )
    .await;
    assert!(!ok, "{out}");
    let (ok, out) = mosquitto_pub(
        mtls,
        &[
            "--cafile",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "-q",
            "1",
            "-t",
            "telemetry/dev1/y",
            "-m",
            "still served",
        ],
    )
    .await;
    assert!(ok, "{out}");

    // Kafka holds what was allowed, each with the identity the proxy vouches for.
    let records = read(&bootstrap, "telemetry", 4, Duration::from_secs(20)).await;
    let mut got: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                String::from_utf8_lossy(&r.payload).into_owned(),
                r.header("barnabas.identity").unwrap_or_default(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("by certificate".to_string(), "dev1".to_string()),
            ("by certificate".to_string(), "dev1".to_string()),
            ("by password".to_string(), "alice".to_string()),
            ("still served".to_string(), "dev1".to_string()),
        ]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(topic_size(&bootstrap, "telemetry"), 4);

    let m = scrape(t.proxy.admin_addr().unwrap()).await;
    let failed = m.value(
        "barnabas_tls_handshakes_total",
        &[("listener", "mtls"), ("result", "failed")],
    );
    assert!(failed >= 1.0, "failed handshakes on mtls: {failed}");
    assert!(
        m.value(
            "barnabas_tls_handshakes_total",
            &[("listener", "mqtts"), ("result", "ok")],
        ) >= 4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_logs_in_with_plain_and_with_external() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (pki, dev1, _) = pki(dir.path());
    let amqps = format!(
        "  amqps:\n    protocol: amqp\n    bind: \"127.0.0.1:0\"\n    tls: {{ cert: {d}/server.pem, key: {d}/server.key, client_ca: {d}/ca.pem }}\n",
        d = dir.path().display()
    );
    let t = TestProxy::start(&config(&bootstrap, dir.path(), &amqps)).await;
    let addr = t.proxy.listener_addr("amqps").unwrap();
    let url = format!("amqps://{addr}");
    let ca = pki.ca();

    // PLAIN over TLS.
    let out = proton_send_with(
        &url,
        "telemetry/alice/a",
        Some(("alice", "secret")),
        &[("AMQP_SEND_CA", &ca)],
        json!([{ "body": "plain over tls" }]),
    )
    .await;
    assert_eq!(out[0]["state"], "accepted", "{out}");
    // EXTERNAL: the certificate is the login.
    let env = [
        ("AMQP_SEND_CA", ca.as_path()),
        ("AMQP_SEND_CERT", dev1.cert.as_path()),
        ("AMQP_SEND_KEY", dev1.key.as_path()),
    ];
    let out = proton_send_with(
        &url,
        "telemetry/dev1/a",
        None,
        &env,
        json!([{ "body": "external" }]),
    )
    .await;
    assert_eq!(out[0]["state"], "accepted", "{out}");
    // The ACL holds for it: not under alice's name.
    let out = proton_send_with(
        &url,
        "telemetry/alice/a",
        None,
        &env,
        json!([{ "body": "spoof" }]),
    )
    .await;
    assert_eq!(out["condition"], "amqp:unauthorized-access", "{out}");
    // Without a certificate there is no EXTERNAL, and no anonymous access.
    let out = proton_send_with(
        &url,
        "telemetry/dev1/a",
        None,
        &[("AMQP_SEND_CA", &ca)],
        json!([{ "body": "nobody" }]),
    )
    .await;
    assert!(out.get("error").is_some(), "{out}");

    let records = read(&bootstrap, "telemetry", 2, Duration::from_secs(20)).await;
    let mut got: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r.header("barnabas.identity").unwrap_or_default(),
                String::from_utf8_lossy(&r.payload).into_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(got[0].0, "alice");
    assert_eq!(got[1].0, "dev1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(topic_size(&bootstrap, "telemetry"), 2);
}

/// paho-mqtt over WebSocket (tests/scripts/mqtt_ws_pub.py); its JSON report.
async fn paho_ws(
    addr: std::net::SocketAddr,
    path: &str,
    topic: &str,
    count: u32,
    extra: &[&str],
) -> serde_json::Value {
    let out = tokio::process::Command::new("/usr/bin/python3")
        .arg(barnabas_tests::repo_root().join("tests/scripts/mqtt_ws_pub.py"))
        .args([
            &addr.ip().to_string(),
            &addr.port().to_string(),
            path,
            topic,
            "1",
            &count.to_string(),
        ])
        .args(extra)
        .output()
        .await
        .expect("python3 with python3-paho-mqtt: run `make setup`");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "paho printed {text:?}; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_publishes_over_websocket_with_and_without_tls() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (pki, _, _) = pki(dir.path());
    let ws = format!(
        "  ws: {{ protocol: mqtt-ws, bind: \"127.0.0.1:0\" }}\n  wss: {{ protocol: mqtt-ws, bind: \"127.0.0.1:0\", path: /ws/mqtt, tls: {{ cert: {d}/server.pem, key: {d}/server.key }} }}\n",
        d = dir.path().display()
    );
    let t = TestProxy::start(&config(&bootstrap, dir.path(), &ws)).await;
    let ws = t.proxy.listener_addr("ws").unwrap();
    let wss = t.proxy.listener_addr("wss").unwrap();
    let ca = arg(&pki.ca());
    let login = ["--user", "alice", "--password", "secret"];

    let out = paho_ws(ws, "/mqtt", "telemetry/alice/ws", 50, &login).await;
    assert_eq!(out, json!({ "connack": 0, "published": 50 }));
    let mut args = vec!["--ca", ca.as_str()];
    args.extend_from_slice(&login);
    let out = paho_ws(wss, "/ws/mqtt", "telemetry/alice/wss", 50, &args).await;
    assert_eq!(out, json!({ "connack": 0, "published": 50 }));
    // The same login rules as everywhere: a wrong password is CONNACK 4 (3.1.1).
    let out = paho_ws(
        ws,
        "/mqtt",
        "telemetry/alice/ws",
        1,
        &["--user", "alice", "--password", "wrong"],
    )
    .await;
    assert_eq!(out, json!({ "connack": 4 }));
    // An upgrade to another path is not served.
    let out = paho_ws(ws, "/other", "telemetry/alice/ws", 1, &login).await;
    assert!(out.get("error").is_some() || out["connack"] != 0, "{out}");

    let records = read(&bootstrap, "telemetry", 100, Duration::from_secs(20)).await;
    assert!(
        records
            .iter()
            .all(|r| r.header("barnabas.identity").as_deref() == Some("alice"))
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(topic_size(&bootstrap, "telemetry"), 100);
}

/// A rustls client config that trusts only `ca`.
fn client_config(ca: &Path) -> std::sync::Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in barnabas::edge::tls::read_certs(ca).unwrap() {
        roots.add(cert).unwrap();
    }
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(barnabas::edge::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The leaf certificate a new TLS connection to `addr` is served.
async fn served_certificate(addr: std::net::SocketAddr, ca: &Path) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(ca));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("tls handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

fn leaf(file: &Path) -> Vec<u8> {
    barnabas::edge::tls::read_certs(file).unwrap()[0]
        .as_ref()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_loss() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
    const MIN_MESSAGES: usize = 500;

    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (pki, _, _) = pki(dir.path());
    let t = TestProxy::start(&config(&bootstrap, dir.path(), "")).await;
    let mqtts = t.proxy.listener_addr("mqtts").unwrap();
    let admin = t.proxy.admin_addr().unwrap();
    let old = leaf(&dir.path().join("server.pem"));
    assert_eq!(served_certificate(mqtts, &pki.ca()).await, old);

    // One client publishes at QoS 1 over TLS until both rotations are done.
    let mut opts = MqttOptions::new("rotating", "localhost", mqtts.port());
    opts.set_credentials("alice", "secret");
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        client_config(&pki.ca()),
    )));
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let rotated = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = rotated.clone();
    let publisher = tokio::spawn(async move {
        let mut sent = 0;
        while sent < MIN_MESSAGES || !stop.load(std::sync::atomic::Ordering::Relaxed) {
            client
                .publish(
                    "telemetry/alice/r",
                    QoS::AtLeastOnce,
                    false,
                    format!("m{sent}"),
                )
                .await
                .unwrap();
            sent += 1;
            if sent % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        sent
    });
    let (acked_tx, acked_rx) = tokio::sync::watch::channel(0usize);
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    let _ = acked_tx.send(acked);
                }
                Ok(_) => {}
                Err(e) => panic!("the connection failed after {acked} acks: {e}"),
            }
        }
    });

    let reloads = |result: &'static str| async move {
        scrape(admin).await.value(
            "barnabas_tls_reloads_total",
            &[("listener", "mqtts"), ("result", result)],
        )
    };
    let wait_for = |result: &'static str| async move {
        for _ in 0..100 {
            if reloads(result).await >= 1.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no {result} certificate reload");
    };

    // Publishing is under way (the first acknowledgement waits for the topic to exist) before
    // the files change.
    let mut acked_rx = acked_rx;
    tokio::time::timeout(Duration::from_secs(30), acked_rx.wait_for(|a| *a > 0))
        .await
        .expect("a first publish acknowledged")
        .unwrap();

    // A key that is not the certificate's is refused; the old certificate keeps serving.
    let other = pki.server("other", Validity::default()).unwrap();
    std::fs::copy(&other.key, dir.path().join("server.key")).unwrap();
    wait_for("rejected").await;
    assert_eq!(served_certificate(mqtts, &pki.ca()).await, old);

    // A new pair, written in place: new connections get it.
    let new = pki.server("new", Validity::default()).unwrap();
    std::fs::copy(&new.cert, dir.path().join("server.pem")).unwrap();
    std::fs::copy(&new.key, dir.path().join("server.key")).unwrap();
    wait_for("applied").await;
    assert_eq!(served_certificate(mqtts, &pki.ca()).await, leaf(&new.cert));

    // The connection opened before both rotations still carries new messages.
    let rotated_at = *acked_rx.borrow();
    tokio::time::timeout(
        Duration::from_secs(30),
        acked_rx.wait_for(|a| *a > rotated_at),
    )
    .await
    .expect("publishing went on across the rotations")
    .unwrap();
    rotated.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = publisher.await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), acked_rx.wait_for(|a| *a == sent))
        .await
        .expect("every publish acknowledged")
        .unwrap();
    acks.abort();
    let records = read(&bootstrap, "telemetry", sent, Duration::from_secs(30)).await;
    let distinct: std::collections::BTreeSet<Vec<u8>> =
        records.into_iter().map(|r| r.payload).collect();
    assert_eq!(
        distinct.len(),
        sent,
        "every acknowledged message is in Kafka"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqp_destination_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "barnabas test CA").unwrap();
    pki.server("server", Validity::default()).unwrap();
    let proxy_cert = pki.client("proxy", "barnabas-proxy").unwrap();
    let rabbit = barnabas_tests::amqp::Rabbit::start_tls(dir.path());
    let url = rabbit.tls_url().unwrap();
    let yaml = format!(
        r##"
listeners:
  mqtt: {{ bind: "127.0.0.1:0" }}
destinations:
  rabbit:
    kind: amqp
    url: "{url}"
    tls: {{ ca: {ca}, cert: {cert}, key: {key} }}
  wrong-ca:
    kind: amqp
    url: "{url}"
    timeout_ms: 3000
    tls: {{ ca: {other_ca} }}
routes:
  - {{ name: secure, from: "mqtt:secure/#", to: "rabbit:/queue/secure" }}
  - {{ name: untrusted, from: "mqtt:untrusted/#", to: "wrong-ca:/queue/untrusted" }}
"##,
        ca = pki.ca().display(),
        cert = proxy_cert.cert.display(),
        key = proxy_cert.key.display(),
        other_ca = {
            let other = dir.path().join("other");
            Pki::new(&other, "another CA")
                .unwrap()
                .ca()
                .display()
                .to_string()
        },
    );
    let t = TestProxy::start(&yaml).await;

    let (ok, out) = mosquitto_pub(
        t.mqtt,
        &[
            "-V", "mqttv5", "-q", "1", "-t", "secure/a", "-m", "over tls",
        ],
    )
    .await;
    assert!(ok, "{out}");
    // A broker whose certificate does not chain to the configured CA is never trusted: the
    // message fails (0x80), it is not delivered in the clear.
    let (ok, out) = mosquitto_pub(
        t.mqtt,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "untrusted/a",
            "-m",
            "no",
            "-d",
        ],
    )
    .await;
    assert!(out.contains("RC:128"), "{ok} {out}");

    let got =
        barnabas_tests::amqp::receive(&rabbit.url, "/queue/secure", 1, Duration::from_secs(10))
            .await;
    assert_eq!(got.len(), 1);
    let untrusted =
        barnabas_tests::amqp::receive(&rabbit.url, "/queue/untrusted", 1, Duration::from_secs(2))
            .await;
    assert!(untrusted.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_tls_to_a_real_broker() {
    use barnabas_bench::peers::Stunnel;
    use barnabas_tests::{Tansu, free_low_port};

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "barnabas test CA").unwrap();
    let server = pki.server("kafka", Validity::default()).unwrap();
    let other_ca = Pki::new(&dir.path().join("other"), "another CA")
        .unwrap()
        .ca();
    // tansu speaks plain Kafka; stunnel terminates TLS in front of it, and tansu tells clients
    // to come back through stunnel.
    let (tansu_port, tls_port) = (free_low_port(), free_low_port());
    let tls_addr = format!("127.0.0.1:{tls_port}");
    let tansu = Tansu::start_on(tansu_port, Some(&tls_addr)).unwrap();
    tansu.create_topic("secure", 1);
    let _stunnel = Stunnel::start(tls_port, &tansu.bootstrap, &server.cert, &server.key).unwrap();

    let ca = pki.ca();
    let yaml = format!(
        r##"
listeners:
  mqtt: {{ bind: "127.0.0.1:0" }}
destinations:
  kafka:
    kind: kafka
    bootstrap: "{tls_addr}"
    options: {{ security.protocol: SSL, ssl.ca.location: "{ca}", linger.ms: 0, message.timeout.ms: 10000 }}
  untrusted:
    kind: kafka
    bootstrap: "{tls_addr}"
    options: {{ security.protocol: SSL, ssl.ca.location: "{other}", message.timeout.ms: 3000 }}
routes:
  - {{ name: secure, from: "mqtt:secure/#", to: "kafka:secure" }}
  - {{ name: untrusted, from: "mqtt:untrusted/#", to: "untrusted:secure" }}
"##,
        ca = ca.display(),
        other = other_ca.display(),
    );
    let t = TestProxy::start(&yaml).await;

    for i in 0..20 {
        let (ok, out) = mosquitto_pub(
            t.mqtt,
            &[
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-t",
                "secure/a",
                "-m",
                &format!("m{i}"),
            ],
        )
        .await;
        assert!(ok, "{out}");
    }
    // A broker certificate outside the configured CA: the message fails, nothing is sent.
    let (_, out) = mosquitto_pub(
        t.mqtt,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "untrusted/a",
            "-m",
            "no",
            "-d",
        ],
    )
    .await;
    assert!(out.contains("PUBACK (Mid: 1, RC:128)"), "{out}");

    let ca_text = ca.display().to_string();
    let b = tls_addr.clone();
    let records = tokio::task::spawn_blocking(move || {
        let options = [
            ("security.protocol", "SSL"),
            ("ssl.ca.location", ca_text.as_str()),
        ];
        barnabas_tests::read_topic_with(&b, &options, "secure", 21, Duration::from_secs(15))
    })
    .await
    .unwrap();
    let mut payloads: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    payloads.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(payloads, want);
}
