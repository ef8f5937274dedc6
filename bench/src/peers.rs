//! Real peers run as their own processes: tansu (a Kafka-API broker), mosquitto (the reference MQTT
//! broker), stunnel (a TLS terminator in front of a broker) and the proxy's own binary, each on a
//! free loopback port, stopped when dropped.

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
        Tansu::start_with(port, advertised, "memory://tansu/")
    }

    /// Starts tansu on `port` with the storage engine at `storage` (`memory://…`, or the URL of
    /// a [`Postgres`] database, which outlives the broker process).
    pub fn start_with(port: u16, advertised: Option<&str>, storage: &str) -> anyhow::Result<Tansu> {
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = advertised.map_or_else(|| url.clone(), |a| format!("tcp://{a}"));
        let mut child = Command::new("tansu");
        child
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", storage])
            .stdout(Stdio::null());
        // `TANSU_LOG=warn` (say) shows the broker's own log on stderr.
        match std::env::var("TANSU_LOG") {
            Ok(filter) => child.env("RUST_LOG", filter).stderr(Stdio::inherit()),
            Err(_) => child.env("RUST_LOG", "warn").stderr(Stdio::null()),
        };
        let mut child = child
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

/// stunnel terminating TLS on a loopback port and relaying the plaintext to a broker: Kafka over
/// TLS in front of a broker that does not terminate TLS itself.
pub struct Stunnel {
    child: Child,
    _dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`, where clients connect with TLS.
    pub addr: String,
}

impl Stunnel {
    /// Listens on `port` with the certificate `cert` and key `key` (PEM), relaying to `to`.
    pub fn start(port: u16, to: &str, cert: &Path, key: &Path) -> anyhow::Result<Stunnel> {
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("stunnel.conf");
        let addr = format!("127.0.0.1:{port}");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\ndebug = warning\n[relay]\naccept = {addr}\nconnect = {to}\ncert = {}\nkey = {}\n",
                cert.display(),
                key.display()
            ),
        )?;
        let mut child = Command::new("stunnel")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("stunnel is not installed: run `make setup` (scripts/setup.sh)")?;
        wait_for(&addr, "stunnel", &mut child)?;
        Ok(Stunnel {
            child,
            _dir: dir,
            addr,
        })
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private PostgreSQL server (Debian's `postgresql` package) holding one database, `tansu`,
/// with the tables tansu's `postgres://` storage engine uses (`scripts/tansu-postgres.sql`). Its
/// data directory is a temporary one; the server is stopped (fast shutdown) when dropped.
pub struct Postgres {
    child: Child,
    _dir: tempfile::TempDir,
    /// The storage URL to give tansu.
    pub url: String,
}

/// The schema tansu's PostgreSQL storage engine expects.
const TANSU_SCHEMA: &str = include_str!("../../scripts/tansu-postgres.sql");

impl Postgres {
    /// Creates a database cluster in a temporary directory and starts a server for it on a free
    /// loopback port. As root, the server runs as the `postgres` user (initdb refuses root).
    pub fn start() -> anyhow::Result<Postgres> {
        let bin = postgres_bin()?;
        let owner = postgres_owner()?;
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let as_owner = |program: &str| {
            let mut c = Command::new(bin.join(program));
            if let Some((uid, gid)) = owner {
                use std::os::unix::process::CommandExt;
                c.uid(uid).gid(gid);
            }
            c.stdout(Stdio::null()).stderr(Stdio::piped());
            c
        };
        let out = as_owner("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .context("initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_low_port();
        let mut child = as_owner("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(dir.path())
            .stderr(Stdio::null())
            .spawn()
            .context("postgres")?;
        wait_for(&format!("127.0.0.1:{port}"), "postgres", &mut child)?;
        let psql = |database: &str, input: &str| -> anyhow::Result<()> {
            use std::io::Write;
            let mut p = Command::new(bin.join("psql"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                .args([
                    "-d",
                    database,
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-1",
                    "-f",
                    "-",
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("psql")?;
            p.stdin
                .take()
                .context("psql stdin")?
                .write_all(input.as_bytes())?;
            let out = p.wait_with_output()?;
            if !out.status.success() {
                bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        // The server accepts TCP a moment before it accepts logins: retry the first statement.
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(e) = psql("postgres", "select 1;") {
            if Instant::now() > deadline {
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // CREATE DATABASE cannot run inside the transaction `-1` opens.
        let out = Command::new(bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "tansu",
            ])
            .output()
            .context("createdb")?;
        if !out.status.success() {
            bail!("createdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        psql("tansu", TANSU_SCHEMA)?;
        Ok(Postgres {
            child,
            _dir: dir,
            url: format!("postgres://postgres@127.0.0.1:{port}/tansu"),
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown: it ends its own backends before it exits.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// The directory of the newest installed PostgreSQL server's programs, or `BARNABAS_PG_BIN`.
fn postgres_bin() -> anyhow::Result<std::path::PathBuf> {
    if let Ok(dir) = std::env::var("BARNABAS_PG_BIN") {
        return Ok(dir.into());
    }
    let mut versions: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("PostgreSQL's server is not installed: run `make setup` (scripts/setup.sh)")
}

/// The `postgres` user's uid and gid when running as root, where the server must not run as root.
fn postgres_owner() -> anyhow::Result<Option<(u32, u32)>> {
    let me = std::fs::read_to_string("/proc/self/status")?;
    let root = me
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        == Some("0");
    if !root {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres"))
                .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
        })
        .map(Some)
        .context("running as root and there is no `postgres` user: run `make setup`")
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
    barnabas_with(binary, config, listen, &[])
}

/// [`barnabas`] with more arguments for `barnabas run` (`--workers 1`).
pub fn barnabas_with(
    binary: &Path,
    config: &Path,
    listen: &str,
    args: &[&str],
) -> anyhow::Result<Process> {
    let mut child = Command::new(binary)
        .args(["run", "--config"])
        .arg(config)
        .args(args)
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
