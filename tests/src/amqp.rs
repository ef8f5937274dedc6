//! AMQP 1.0 peers for tests: a private RabbitMQ (with its AMQP 1.0 plugin), Qpid Proton's Python
//! client as a sender, fe2o3-amqp's client as a sender and a receiver, and raw frames for tests
//! that speak AMQP frame by frame.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use fe2o3_amqp::types::messaging::{Body, Message, Outcome};
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Connection, Receiver, Sender, Session};

use crate::{free_low_port, repo_root};

/// A RabbitMQ node of this test's own on loopback ports, stopped when dropped (or when the test
/// process dies).
pub struct Rabbit {
    dir: tempfile::TempDir,
    ports: [u16; 3],
    /// `amqp://127.0.0.1:PORT`.
    pub url: String,
    /// The TLS port and the directory of its ca.pem, server.pem and server.key, when started
    /// with [`Rabbit::start_tls`].
    tls: Option<(u16, PathBuf)>,
}

impl Rabbit {
    /// Starts a node; takes about five seconds.
    pub fn start() -> Rabbit {
        Rabbit::start_with(None)
    }

    /// Starts a node that also listens for TLS (`amqps`), with the certificate `server.pem` and
    /// key `server.key` of `dir`, requiring a client certificate issued by `dir/ca.pem`.
    pub fn start_tls(dir: &std::path::Path) -> Rabbit {
        Rabbit::start_with(Some((free_low_port(), dir.to_path_buf())))
    }

    /// `amqps://127.0.0.1:PORT` of a node started with [`Rabbit::start_tls`].
    pub fn tls_url(&self) -> Option<String> {
        self.tls
            .as_ref()
            .map(|(port, _)| format!("amqps://127.0.0.1:{port}"))
    }

    fn start_with(tls: Option<(u16, PathBuf)>) -> Rabbit {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ports = [0u16; 3];
        for i in 0..3 {
            loop {
                let p = free_low_port();
                if !ports[..i].contains(&p) {
                    ports[i] = p;
                    break;
                }
            }
        }
        let rabbit = Rabbit {
            url: format!("amqp://127.0.0.1:{}", ports[0]),
            dir,
            ports,
            tls,
        };
        rabbit.start_again();
        rabbit
    }

    /// Starts the node again after [`Rabbit::stop`], on the same port and with the same data.
    pub fn start_again(&self) {
        let mut cmd = Command::new(script());
        if let Some((port, dir)) = &self.tls {
            cmd.env("RABBITMQ_TLS_PORT", port.to_string())
                .env("RABBITMQ_TLS_DIR", dir);
        }
        let out = cmd
            .arg("start")
            .arg(self.dir.path())
            .args(self.ports.map(|p| p.to_string()))
            .arg(std::process::id().to_string())
            .output()
            .expect("scripts/rabbitmq.sh");
        assert!(
            out.status.success(),
            "RabbitMQ did not start (is rabbitmq-server installed? run `make setup`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the node.
    pub fn stop(&self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[0]))
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        self.stop();
    }
}

fn script() -> PathBuf {
    repo_root().join("scripts/rabbitmq.sh")
}

/// Receives `want` messages from the durable queue at `address` of `url` (or fewer, once `timeout` passes without
/// one), accepting each.
pub async fn receive(
    url: &str,
    address: &str,
    want: usize,
    timeout: Duration,
) -> Vec<Message<Body<Value>>> {
    let mut connection = Connection::open("test-receiver", url)
        .await
        .expect("connect to the AMQP broker");
    let mut session = Session::begin(&mut connection).await.expect("session");
    // Durable, like the queues the proxy's AMQP destination declares on RabbitMQ.
    let source = fe2o3_amqp::types::messaging::Source::builder()
        .address(address)
        .durable(fe2o3_amqp::types::messaging::TerminusDurability::Configuration)
        .build();
    let mut receiver = Receiver::builder()
        .name("test-receiver")
        .source(source)
        .attach(&mut session)
        .await
        .expect("receiver");
    let mut out = Vec::new();
    while out.len() < want {
        match tokio::time::timeout(timeout, receiver.recv::<Body<Value>>()).await {
            Ok(Ok(delivery)) => {
                receiver.accept(&delivery).await.expect("accept");
                out.push(delivery.into_message());
            }
            _ => break,
        }
    }
    // Bounded: a broker that never answers the `end` must not hold the test (fe2o3-amqp's
    // session busy-polls while it waits for it).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), receiver.close()).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), session.end()).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), connection.close()).await;
    out
}

/// Sends each message on one fe2o3 sender link to `address` at `url`, waiting for each outcome.
pub async fn send(
    url: &str,
    address: &str,
    messages: Vec<Message<Body<Value>>>,
) -> Result<Vec<Outcome>, String> {
    let mut connection = Connection::open("test-sender", url)
        .await
        .map_err(|e| format!("open: {e}"))?;
    let mut session = Session::begin(&mut connection)
        .await
        .map_err(|e| format!("begin: {e}"))?;
    let mut sender = Sender::attach(&mut session, "test-sender", address)
        .await
        .map_err(|e| format!("attach: {e}"))?;
    let mut outcomes = Vec::new();
    for m in messages {
        outcomes.push(sender.send(m).await.map_err(|e| format!("send: {e}"))?);
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), sender.close()).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), session.end()).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), connection.close()).await;
    Ok(outcomes)
}

/// Sends `messages` (see tests/scripts/amqp_send.py for their fields) with Qpid Proton's Python
/// client and returns the outcomes it reports, as JSON.
pub async fn proton_send(
    url: &str,
    address: &str,
    credentials: Option<(&str, &str)>,
    messages: serde_json::Value,
) -> serde_json::Value {
    proton_send_with(url, address, credentials, &[], messages).await
}

/// [`proton_send`] with environment variables for the script (`AMQP_SEND_CA`, `AMQP_SEND_CERT`
/// and `AMQP_SEND_KEY` for `amqps://`).
pub async fn proton_send_with(
    url: &str,
    address: &str,
    credentials: Option<(&str, &str)>,
    env: &[(&str, &std::path::Path)],
    messages: serde_json::Value,
) -> serde_json::Value {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new("/usr/bin/python3");
    cmd.arg(repo_root().join("tests/scripts/amqp_send.py"))
        .args([url, address])
        .envs(env.iter().map(|(k, v)| (*k, *v)));
    if let Some((user, password)) = credentials {
        cmd.args([user, password]);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with python3-qpid-proton: run `make setup`");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(messages.to_string().as_bytes())
        .await
        .expect("write messages");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("proton sender finished in time")
        .expect("proton sender ran");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "proton sender printed {text:?}; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// One AMQP frame on channel 0 (doff 2): `performative`, then `payload`.
pub fn raw_frame(performative: &impl serde_amqp::serde::Serialize, payload: &[u8]) -> Vec<u8> {
    let body = serde_amqp::to_vec(performative).expect("encode");
    let mut f = ((8 + body.len() + payload.len()) as u32)
        .to_be_bytes()
        .to_vec();
    f.extend_from_slice(&[2, 0, 0, 0]);
    f.extend_from_slice(&body);
    f.extend_from_slice(payload);
    f
}

/// The `open` a raw client sends: no idle timeout of its own, 8 channels.
pub fn raw_open(container_id: &str) -> fe2o3_amqp::types::performatives::Open {
    fe2o3_amqp::types::performatives::Open {
        container_id: container_id.into(),
        hostname: None,
        max_frame_size: 65536.into(),
        channel_max: 8.into(),
        idle_time_out: None,
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    }
}
