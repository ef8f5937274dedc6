//! Real peers run as their own processes: tansu (a Kafka-API broker), mosquitto (the reference MQTT
//! broker) and the proxy's own binary, each on a free loopback port, stopped when dropped.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A free loopback port below the kernel's ephemeral range (32768 and up): a peer bound inside it
/// can collide with outgoing connections.
pub fn free_low_port() -> u16 {
    // Tests of one binary run in parallel: each call starts somewhere else.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = u64::from(std::process::id()) * 7919 + call * 613;
    let mut candidate = 20000 + (seed % 10000) as u16;
    for _ in 0..2000 {
        if TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            return candidate;
        }
        candidate = 20000 + (candidate - 20000 + 7) % 12000;
    }
    // Nothing free in the low range: let the kernel choose.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Waits until something accepts connections on `addr`.
fn wait_for(addr: &str, what: &str, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{what} exited with {status} before listening on {addr}");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A child process killed when dropped.
pub struct Process {
    child: Child,
}

impl Process {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tansu broker (a separately written Kafka-API broker) running as a child process.
pub struct Tansu {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub bootstrap: String,
}

impl Tansu {
    /// Starts tansu with in-memory storage on a free loopback port. Panics when it cannot: for
    /// tests, where the message says what to install.
    pub fn start() -> Tansu {
        match Tansu::try_start() {
            Ok(t) => t,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Starts tansu with in-memory storage on a free loopback port.
    pub fn try_start() -> anyhow::Result<Tansu> {
        Tansu::start_on(free_low_port(), None)
    }

    /// Starts tansu with in-memory storage on `port`, telling clients to reach it at `advertised`
    /// (`host:port`, for a relay in front of it) or at its own address.
    pub fn start_on(port: u16, advertised: Option<&str>) -> anyhow::Result<Tansu> {
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = advertised.map_or_else(|| url.clone(), |a| format!("tcp://{a}"));
        let mut child = Command::new("tansu")
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("tansu is not installed: run `make setup` (scripts/setup.sh)")?;
        let bootstrap = format!("127.0.0.1:{port}");
        wait_for(&bootstrap, "tansu", &mut child)?;
        Ok(Tansu { child, bootstrap })
    }

    /// Creates `topic` with `partitions` partitions. Panics on failure (for tests).
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        if let Err(e) = self.try_create_topic(topic, partitions) {
            panic!("{e:#}");
        }
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn try_create_topic(&self, topic: &str, partitions: u32) -> anyhow::Result<()> {
        let status = Command::new("tansu")
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://{}", self.bootstrap))
            .args(["--partitions", &partitions.to_string(), topic])
            .env("RUST_LOG", "warn")
            .status()
            .context("tansu topic create")?;
        if !status.success() {
            bail!("tansu topic create {topic} failed");
        }
        Ok(())
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Debian's mosquitto on a free loopback port; returns it and its port.
pub fn mosquitto(dir: &Path) -> anyhow::Result<(Process, u16)> {
    let port = free_low_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\nmax_queued_messages 100000\n"
        ),
    )?;
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("mosquitto is not installed: run `make setup`")?;
    wait_for(&format!("127.0.0.1:{port}"), "mosquitto", &mut child)?;
    Ok((Process { child }, port))
}

/// Starts the proxy's release binary on `config`, waiting for `listen` to accept connections.
pub fn barnabas(binary: &Path, config: &Path, listen: &str) -> anyhow::Result<Process> {
    let mut child = Command::new(binary)
        .args(["run", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("BARNABAS_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!(
                "{}: build it with `cargo build --release -p barnabas`",
                binary.display()
            )
        })?;
    wait_for(listen, "barnabas", &mut child)?;
    Ok(Process { child })
}

/// CPU seconds (user + system) a process has used so far, and its peak resident set in KiB.
pub fn usage(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    // Linux reports CPU time in clock ticks of 100 Hz.
    Ok((ticks / 100.0, status_kib(pid, "VmHWM")?))
}

/// A process's resident set now, in KiB.
pub fn rss(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// A `kB` field of `/proc/PID/status`.
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// The number of partitions of `topic`, once the cluster's metadata has it: the first requests may
/// only start the connection, and a topic written a moment ago may not be known yet. `None` when
/// `timeout` passes first.
pub fn kafka_partitions(
    consumer: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Option<usize> {
    use rdkafka::consumer::Consumer;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(2))
            && let Some(t) = md.topics().first()
            && t.error().is_none()
            && !t.partitions().is_empty()
        {
            return Some(t.partitions().len());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
