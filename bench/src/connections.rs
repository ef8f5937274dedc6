//! The connection benchmark: how much memory the proxy spends per idle MQTT connection, and how
//! many it holds. The proxy runs as its own process; the harness opens plain MQTT 3.1.1
//! connections (CONNECT, wait for CONNACK, then silence with keep-alive off) in batches and reads
//! the proxy's resident set before and after.
//!
//! One source address reaches one listener from about 28,000 ephemeral ports, so the connections
//! come from several loopback addresses (127.0.0.2, 127.0.0.3, ...), at most
//! [`PER_SOURCE_ADDRESS`] each. Each connection is a descriptor in both processes: the harness
//! raises its own descriptor limit (the hard one too, when it may) before it starts the proxy,
//! which inherits it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::peers::{self, free_low_port};

/// The scenario's knobs.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionsArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// The proxy binary (`cargo build --release -p barnabas`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/barnabas"))]
    pub binary: PathBuf,
}

/// What the scenario measured.
#[derive(Debug, Clone)]
pub struct ConnectionsReport {
    /// Connections asked for.
    pub target: usize,
    /// Connections that got their CONNACK and stayed open.
    pub opened: usize,
    /// The proxy's resident set before, in KiB.
    pub rss_before_kib: u64,
    /// The proxy's resident set with every connection open, in KiB.
    pub rss_after_kib: u64,
    /// The first failure, if the count stopped short.
    pub first_error: Option<String>,
}

impl ConnectionsReport {
    /// Resident memory per open connection, in KiB.
    pub fn per_connection_kib(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 / self.opened.max(1) as f64
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        format!(
            "connections: {} of {} idle MQTT 3.1.1 connections open; proxy RSS {:.1} MiB before, {:.1} MiB after: {:.1} KiB per connection (target ≤ 8){}\n",
            self.opened,
            self.target,
            self.rss_before_kib as f64 / 1024.0,
            self.rss_after_kib as f64 / 1024.0,
            self.per_connection_kib(),
            self.first_error
                .as_ref()
                .map(|e| format!("; stopped at: {e}"))
                .unwrap_or_default()
        )
    }
}

/// Connections opened from one loopback source address: well inside the 28,000-odd ephemeral
/// ports of Linux's default range.
const PER_SOURCE_ADDRESS: usize = 20_000;

/// Descriptors the harness and the proxy need besides the connections (listeners, the embedded
/// Kafka, log files, librdkafka's sockets).
pub(crate) const SPARE_DESCRIPTORS: u64 = 1_000;

/// Raises this process's descriptor limit to `wanted`: the hard limit too when the process may
/// (root, or `CAP_SYS_RESOURCE`), else as far as the hard limit goes. Returns the limit now set.
pub(crate) fn raise_descriptor_limit(wanted: u64) -> anyhow::Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let hard = now.maximum.unwrap_or(u64::MAX);
    if hard < wanted {
        let raised = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(wanted),
                maximum: Some(wanted),
            },
        );
        if raised.is_ok() {
            return Ok(wanted);
        }
    }
    barnabas::raise_open_file_limit()?;
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

/// The loopback address connection `i` comes from.
fn source_address(i: usize) -> std::net::SocketAddr {
    let k = u8::try_from(2 + i / PER_SOURCE_ADDRESS).unwrap_or(u8::MAX);
    ([127, 0, 0, k], 0).into()
}

/// A 3.1.1 CONNECT with a clean session, keep-alive off and `client_id`.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    let remaining = 10 + 2 + id.len();
    let mut p = vec![0x10, remaining as u8];
    p.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0]);
    p.extend_from_slice(&(id.len() as u16).to_be_bytes());
    p.extend_from_slice(id);
    p
}

async fn open(addr: std::net::SocketAddr, i: usize) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(source_address(i))?;
    let mut stream = socket.connect(addr).await?;
    stream
        .write_all(&connect_packet(&format!("idle-{i}")))
        .await?;
    let mut connack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut connack)).await??;
    if connack != [0x20, 0x02, 0x00, 0x00] {
        bail!("CONNACK {connack:02x?}");
    }
    Ok(stream)
}

/// Runs the scenario.
pub async fn run(args: &ConnectionsArgs) -> anyhow::Result<ConnectionsReport> {
    let wanted = args.count as u64 + SPARE_DESCRIPTORS;
    let limit = raise_descriptor_limit(wanted)?;
    if limit < wanted {
        tracing::warn!(
            limit,
            wanted,
            "the descriptor limit stops short of the count: raise the hard limit (ulimit -Hn) or run as root"
        );
    }
    let dir = tempfile::tempdir()?;
    let port = free_low_port();
    let config = dir.path().join("routes.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  mqtt: {{ bind: \"127.0.0.1:{port}\", receive_maximum: 16 }}\n\
             destinations:\n  kafka: {{ kind: kafka, bootstrap: embedded }}\n\
             limits: {{ max_connections: {max} }}\n\
             routes:\n  - name: r\n    from: \"mqtt:#\"\n    to: \"kafka:idle\"\n",
            max = args.count + 100
        ),
    )?;
    let proxy = peers::barnabas(&args.binary, &config, &format!("127.0.0.1:{port}"))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_kib = peers::rss(proxy.pid())?;
    let addr = ([127, 0, 0, 1], port).into();
    let mut streams = Vec::with_capacity(args.count);
    let mut first_error = None;
    const BATCH: usize = 250;
    'outer: for start in (0..args.count).step_by(BATCH) {
        let end = (start + BATCH).min(args.count);
        let batch: Vec<_> = (start..end).map(|i| tokio::spawn(open(addr, i))).collect();
        for handle in batch {
            match handle.await? {
                Ok(stream) => streams.push(stream),
                Err(e) => {
                    first_error = Some(format!("connection {}: {e:#}", streams.len() + 1));
                    break 'outer;
                }
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_kib = peers::rss(proxy.pid())?;
    let opened = streams.len();
    drop(streams);
    Ok(ConnectionsReport {
        target: args.count,
        opened,
        rss_before_kib,
        rss_after_kib,
        first_error,
    })
}
