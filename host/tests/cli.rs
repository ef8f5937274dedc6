//! The `barnabas` binary as a user runs it: `check` on good and bad files, and `run` on the
//! default routes.yaml with its embedded Kafka, fed by mosquitto_pub.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const BIN: &str = env!("CARGO_BIN_EXE_barnabas");

/// A child process killed when the test ends, even by a failed assertion.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A bare HTTP/1.0 GET on loopback: the status line, headers and body as text.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn check_accepts_the_default_routes() {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(repo().join("routes.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok (1 routes, 3 plugins, 1 destinations)"),
        "{stdout}"
    );
}

/// A self-signed certificate for `localhost` valid from `from` to `until` (seconds from now), and
/// its key, as PEM.
fn certificate(from: i64, until: i64) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let at = |secs: i64| {
        let now = std::time::SystemTime::now();
        let d = Duration::from_secs(secs.unsigned_abs());
        if secs >= 0 { now + d } else { now - d }
    };
    params.not_before = at(from).into();
    params.not_after = at(until).into();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

#[test]
fn check_loads_every_certificate_and_reports_expired_or_mismatched_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (good, good_key) = certificate(-3600, 86_400);
    let (expired, expired_key) = certificate(-86_400, -3600);
    let (_, other_key) = certificate(-3600, 86_400);
    for (name, text) in [
        ("good.pem", &good),
        ("good.key", &good_key),
        ("expired.pem", &expired),
        ("expired.key", &expired_key),
        ("other.key", &other_key),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let config = dir.path().join("routes.yaml");
    let write = |listeners: &str| {
        std::fs::write(
            &config,
            format!(
                "listeners:\n{listeners}\
                 destinations:\n  kafka: {{ kind: kafka, bootstrap: embedded }}\n\
                 routes:\n  - {{ name: r, from: \"mqtt:#\", to: \"kafka:out\" }}\n"
            ),
        )
        .unwrap();
    };
    let check = || {
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let file = config.display().to_string();
    let d = dir.path().display();

    write(
        "  mqtts: { protocol: mqtt, bind: \"127.0.0.1:8883\", tls: { cert: good.pem, key: good.key } }\n",
    );
    let (code, stdout, stderr) = check();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("listener \"mqtts\": certificate of \"CN=localhost\", valid until"),
        "{stdout}"
    );

    write(
        "  mqtts: { protocol: mqtt, bind: \"127.0.0.1:8883\", tls: { cert: expired.pem, key: expired.key } }\n  amqps: { protocol: amqp, bind: \"127.0.0.1:5671\", tls: { cert: good.pem, key: other.key } }\n",
    );
    let (code, _, stderr) = check();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{file}:2:57: listener \"mqtts\": {d}/expired.pem: the certificate of \"CN=localhost\" expired on"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:3:57: listener \"amqps\": {d}/other.key: the key is not the one of the certificate in {d}/good.pem"
        )),
        "{stderr}"
    );
}

#[test]
fn check_reports_every_error_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_component = dir.path().join("junk.wasm");
    std::fs::write(&not_a_component, b"\0asm\x01\0\0\0").unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "not wasm at all").unwrap();
    let threshold = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist/threshold.wasm");
    let config = dir.path().join("routes.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  mqtt: {{ bind: \"127.0.0.1:1883\" }}\n\
             destinations:\n  kafka: {{ kind: kafka, bootstrap: embedded }}\n\
             plugins:\n  junk: {{ wasm: \"{}\" }}\n  gone: {{ wasm: missing.wasm }}\n\
             \x20 text: {{ wasm: \"{}\" }}\n\
             \x20 limits:\n    wasm: \"{}\"\n    config: {{ min: 1 }}\n\
             routes:\n  - name: r\n    from: \"mqtt:a/+\"\n    plugins: [junk]\n    to: \"kafka:t.{{1}}\"\n",
            not_a_component.display(),
            text.display(),
            threshold.display(),
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = config.display().to_string();
    // A core module or a file that is not Wasm at all is told how to build a component.
    assert!(
        stderr.contains(&format!(
            "{file}:6:17: plugin \"junk\": {} is a core WebAssembly module, not a component: build the plugin for wasm32-wasip2",
            not_a_component.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:8:17: plugin \"text\": {} is not a WebAssembly file: build the plugin for wasm32-wasip2",
            text.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:7:17: plugin \"gone\": cannot read")),
        "{stderr}"
    );
    // The plugin's complaint about its settings is located at `config:`, not in the JSON text.
    assert!(
        stderr.contains(&format!(
            "{file}:11:13: plugin \"limits\": init failed: invalid plugin config: missing field `field`\n"
        )),
        "{stderr}"
    );

    // A YAML typo is located too, and nothing else is tried.
    std::fs::write(
        &config,
        "listeners:\n  mqtt: { bind: \"127.0.0.1:1883\" }\nroutes:\n  - name: r\n    form: x\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{file}:5:5: unknown field `form`")),
        "{stderr}"
    );
}

/// A record: key, headers, payload.
type Record = (Option<Vec<u8>>, Vec<(String, String)>, Vec<u8>);

/// Reads `topic` from the beginning until `want` records arrived or 20 s passed.
fn read_topic(bootstrap: &str, topic: &str, want: usize) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "cli-test")
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let partitions = loop {
        if let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(2))
            && let Some(t) = md
                .topics()
                .first()
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        {
            break t.partitions().len();
        }
        assert!(Instant::now() < deadline, "topic {topic} never appeared");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let headers = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push((
                m.key().map(<[u8]>::to_vec),
                headers,
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    out
}

/// Runs `barnabas run --config CONFIG` until it logs that it runs: the child, the embedded
/// Kafka's bootstrap address, the log so far and the lines to come.
fn start(config: &Path) -> (Running, String, Vec<String>, mpsc::Receiver<String>) {
    let mut child = Running(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let stderr = child.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let mut bootstrap = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log
        .iter()
        .any(|l: &String| l.contains("barnabas is running"))
    {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("proxy did not start");
        if let Some(i) = line.find("bootstrap=") {
            bootstrap = Some(
                line[i + 10..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_string(),
            );
        }
        log.push(line);
    }
    let bootstrap = bootstrap.expect("the embedded Kafka's address is logged");
    (child, bootstrap, log, rx)
}

#[test]
fn run_the_default_routes_and_publish_with_mosquitto() {
    // The default routes.yaml, moved to free ports and pointed at the built plugins.
    let port = free_port();
    let admin = free_port();
    let text = std::fs::read_to_string(repo().join("routes.yaml")).unwrap();
    let text = text
        .replace("127.0.0.1:1883", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{admin}"))
        .replace(
            "plugins/dist/",
            &format!("{}/plugins/dist/", repo().display()),
        );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.yaml");
    std::fs::write(&config, &text).unwrap();

    let (mut child, bootstrap, mut log, rx) = start(&config);

    // The README's example.
    let out = Command::new("mosquitto_pub")
        .args([
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            "telemetry/acme/dev1",
            "-m",
            r#"{"temperature":42}"#,
        ])
        .output()
        .expect("mosquitto_pub is not installed: run `make setup`");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let records = read_topic(&bootstrap, "telemetry.acme", 1);
    assert_eq!(records.len(), 1);
    let (key, headers, payload) = &records[0];
    assert_eq!(key.as_deref(), Some(&b"dev1"[..]));
    let json: serde_json::Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"temperature": 42, "site": "plant-7"})
    );
    assert!(headers.contains(&("site".into(), "plant-7".into())));

    // The admin endpoint counts it.
    let ready = http_get(admin, "/readyz");
    assert!(ready.starts_with("HTTP/1.0 200"), "{ready}");
    let metrics = http_get(admin, "/metrics");
    assert!(
        metrics.contains("barnabas_messages_out_total{route=\"telemetry\"} 1\n"),
        "{metrics}"
    );

    // A typo saved while it runs: the previous routes keep serving, and the typo's place is in the
    // log and in /status.
    let typo = text.replace("\"kafka:telemetry.{2}\"", "\"kafak:telemetry.{2}\"");
    let line = typo.lines().position(|l| l.contains("kafak:")).unwrap() + 1;
    let column = typo.lines().nth(line - 1).unwrap().find("\"kafak").unwrap() + 1;
    std::fs::write(&config, &typo).unwrap();
    let at = format!("routes.yaml:{line}:{column}: ");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no reload error at {at} logged:\n{}", log.join("\n")));
        let found = line.contains(&at) && line.contains("kafak");
        log.push(line);
        if found {
            break;
        }
    }
    let status = http_get(admin, "/status");
    assert!(status.contains("\"result\":\"rejected\""), "{status}");
    assert!(status.contains(&at), "{status}");
    let out = Command::new("mosquitto_pub")
        .args([
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            "telemetry/acme/dev2",
        ])
        .args(["-m", r#"{"temperature":43}"#])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(read_topic(&bootstrap, "telemetry.acme", 2).len(), 2);

    // SIGTERM drains and exits cleanly.
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    let status = child.0.wait().unwrap();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
        log.push(line);
    }
    assert!(status.success(), "exit {status:?}:\n{}", log.join("\n"));
    assert!(
        log.iter().any(|l| l.contains("drained")),
        "{}",
        log.join("\n")
    );
}

#[test]
fn the_readme_secure_example_runs_as_written() {
    // examples/secure, copied so that its certificates are made in a directory of the test's own,
    // with its ports moved to free ones.
    let dir = tempfile::tempdir().unwrap();
    let example = repo().join("examples/secure");
    for file in ["routes.yaml", "make-certs.sh"] {
        std::fs::copy(example.join(file), dir.path().join(file)).unwrap();
    }
    let made = Command::new("bash")
        .arg(dir.path().join("make-certs.sh"))
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let (mqtts, wss, amqps, admin) = (free_port(), free_port(), free_port(), free_port());
    let text = std::fs::read_to_string(dir.path().join("routes.yaml"))
        .unwrap()
        .replace("127.0.0.1:8883", &format!("127.0.0.1:{mqtts}"))
        .replace("127.0.0.1:8083", &format!("127.0.0.1:{wss}"))
        .replace("127.0.0.1:5671", &format!("127.0.0.1:{amqps}"))
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{admin}"));
    let config = dir.path().join("routes.yaml");
    std::fs::write(&config, text).unwrap();
    let (_child, bootstrap, _, _) = start(&config);

    let certs = dir.path().join("certs");
    let file = |name: &str| certs.join(name).display().to_string();
    let (ca, cert, key) = (file("ca.pem"), file("plant-7.pem"), file("plant-7.key"));
    let port = mqtts.to_string();
    let pubs = |args: &[&str]| {
        let out = Command::new("mosquitto_pub")
            .args(["-h", "localhost", "-p", &port, "--cafile", &ca])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let device = [
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
        "-V",
        "mqttv5",
        "-q",
        "1",
    ];
    let (ok, out) = pubs(
        &[
            &device[..],
            &["-t", "telemetry/plant-7/t1", "-m", r#"{"temperature":21}"#],
        ]
        .concat(),
    );
    assert!(ok, "{out}");
    let (_, out) = pubs(&[&device[..], &["-t", "telemetry/plant-8/t1", "-m", "spoof"]].concat());
    assert!(out.contains("Not authorized"), "{out}");
    let (ok, out) = pubs(&[
        "-u",
        "backend",
        "-P",
        "backend-secret",
        "-q",
        "1",
        "-t",
        "telemetry/any/t1",
        "-m",
        "hi",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = pubs(&[
        "-u",
        "backend",
        "-P",
        "wrong",
        "-q",
        "1",
        "-t",
        "telemetry/any/t1",
        "-m",
        "hi",
    ]);
    assert!(!ok && out.contains("bad user name or password"), "{out}");

    let records = read_topic(&bootstrap, "telemetry", 2);
    let mut identities: Vec<String> = records
        .iter()
        .filter_map(|(_, headers, _)| {
            headers
                .iter()
                .find(|(k, _)| k == "barnabas.identity")
                .map(|(_, v)| v.clone())
        })
        .collect();
    identities.sort();
    assert_eq!(identities, ["backend", "plant-7"]);
}
