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
    assert!(
        out.contains("rc135") || out.to_lowercase().contains("not authorized"),
        "{ok} {out}"
    );

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
