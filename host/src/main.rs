//! The `barnabas` command: `run` the proxy or `check` a config; for plugin authors, `plugin new |
//! build | test`, `record` and `replay` ([`commands`]).

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use barnabas::config::Config;
use barnabas::pipeline::load_plugins;
use barnabas::plugin::PluginEngine;
use barnabas::proxy::Proxy;
use clap::{Parser, Subcommand, ValueEnum};

/// A messaging proxy: MQTT in, WebAssembly plugins, Kafka out, with the client acknowledged
/// only after Kafka committed its message.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format. The level comes from RUST_LOG (default: info), e.g. RUST_LOG=barnabas=debug.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy until SIGINT or SIGTERM, then drain deliveries under way. SIGHUP reloads the
    /// routes file: a valid file is applied whole, an invalid one changes nothing.
    Run {
        /// The routes file.
        #[arg(long, short, default_value = "routes.yaml")]
        config: PathBuf,
        /// How long to wait, on shutdown, for deliveries under way.
        #[arg(long, default_value = "10", value_name = "SECONDS")]
        grace: u64,
        /// Threads that run connections, plugins and routing (default: one per core). Fewer can
        /// cost less CPU per message where the proxy shares its cores (BENCHMARKS.md, "Worker
        /// threads"); librdkafka's threads come on top.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        workers: Option<u16>,
    },
    /// Validate the routes file, load and type-check every plugin it names, and load every TLS
    /// listener's certificate and key (which must match and be valid now), without binding a port
    /// or contacting a broker. Prints every error as file:line:column: cause; exits 1 on any.
    Check {
        /// The routes file.
        #[arg(long, short, default_value = "routes.yaml")]
        config: PathBuf,
    },
    /// Print the hash of a password, read from standard input (one line), for the `users` of
    /// `auth:`: `users: { alice: "<hash>" }`.
    HashPassword,
    /// Write, build and test plugins.
    #[command(subcommand)]
    Plugin(commands::PluginCommand),
    /// Record a route's messages from a running proxy (its admin endpoint) to a JSON-lines file,
    /// for `replay` and `plugin test`.
    Record {
        /// The route.
        #[arg(long)]
        route: String,
        /// How many messages.
        #[arg(long)]
        count: u64,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// The admin endpoint; default: `admin.bind` of --config.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// The routes file the proxy runs, for its admin address.
        #[arg(long, short, default_value = "routes.yaml")]
        config: PathBuf,
        /// Also record what the route's plugins made of each message (replay compares with it).
        #[arg(long)]
        outputs: bool,
        /// Stop after this many bytes.
        #[arg(long, default_value = "67108864")]
        max_bytes: u64,
        /// Stop after this long, even with fewer messages.
        #[arg(long, default_value = "3600", value_name = "SECONDS")]
        timeout: u64,
    },
    /// Run recorded messages through a route's plugins, with no broker, and print every message
    /// whose result changes when plugins are swapped for new builds. Exits 1 when any differs.
    Replay {
        /// The recorded messages (JSON lines).
        file: PathBuf,
        /// The routes file.
        #[arg(long, short, default_value = "routes.yaml")]
        config: PathBuf,
        /// The route whose plugins run.
        #[arg(long)]
        route: String,
        /// NAME=FILE.wasm: run this build in place of plugin NAME (repeatable).
        #[arg(long = "plugin", value_name = "NAME=FILE")]
        plugins: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { config } => check(&config),
        Command::HashPassword => hash_password(),
        Command::Plugin(command) => commands::plugin(command),
        Command::Record {
            route,
            count,
            out,
            admin,
            config,
            outputs,
            max_bytes,
            timeout,
        } => commands::record_command(
            route, count, out, admin, config, outputs, max_bytes, timeout,
        ),
        Command::Replay {
            file,
            config,
            route,
            plugins,
        } => commands::replay_command(file, config, route, plugins),
        Command::Run {
            config,
            grace,
            workers,
        } => match run(config, Duration::from_secs(grace), workers) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("error: cannot read the password: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("error: empty password");
        return ExitCode::FAILURE;
    }
    match barnabas::edge::auth::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let engine = match PluginEngine::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot create the plugin engine: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // Every TLS listener's certificate is loaded and matched with its key, as at start.
    let tls = config
        .listeners
        .mqtt
        .iter()
        .filter_map(|l| Some((l.name.as_str(), l.tls.as_ref()?)))
        .chain(
            config
                .listeners
                .amqp
                .iter()
                .filter_map(|l| Some((l.name.as_str(), l.tls.as_ref()?))),
        );
    let mut tls_failed = false;
    for (listener, tls) in tls {
        match barnabas::edge::tls::server_config(tls) {
            Ok((_, validity)) => println!(
                "{}: listener {listener:?}: certificate of {:?}, valid until {}",
                path.display(),
                validity.subject,
                validity.not_after
            ),
            Err(e) => {
                eprintln!(
                    "{}:{}:{}: listener {listener:?}: {e}",
                    path.display(),
                    tls.location.line,
                    tls.location.column
                );
                tls_failed = true;
            }
        }
    }
    match load_plugins(&config, &engine, None, &Default::default()) {
        Ok(_) if tls_failed => ExitCode::FAILURE,
        Ok(plugins) => {
            println!(
                "{}: ok ({} routes, {} plugins, {} destinations)",
                path.display(),
                config.routes.routes().len(),
                plugins.len(),
                config.destinations.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: PathBuf, grace: Duration, workers: Option<u16>) -> anyhow::Result<ExitCode> {
    if let Err(error) = barnabas::raise_open_file_limit() {
        tracing::warn!(%error, "cannot raise the open-file limit");
    }
    // Validate before starting anything, so a bad file never binds a port.
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        runtime.worker_threads(usize::from(n));
    }
    let runtime = runtime
        .enable_all()
        .thread_name("barnabas")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let proxy = match Proxy::start(config).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::FAILURE);
            }
        };
        tracing::info!(config = %path.display(), "barnabas is running");
        serve_signals(&proxy).await?;
        tracing::info!("shutting down");
        let drained = proxy.shutdown(grace).await;
        Ok(if drained {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

/// Reloads on SIGHUP; returns on SIGINT or SIGTERM.
async fn serve_signals(proxy: &Proxy) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => return r.context("cannot listen for SIGINT"),
            _ = term.recv() => return Ok(()),
            _ = hup.recv() => {
                // The reloader logs the outcome.
                proxy.reload().await;
            }
        }
    }
}
