//! The plugin author's commands of the `barnabas` binary: `plugin new | build | test`, `record`
//! and `replay`. Argument parsing and printing only; the work is in [`barnabas::authoring`].
//! (Part of the binary, not the library.)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use barnabas::authoring::record::{Record, admin_of, record};
use barnabas::authoring::replay::{Replay, replay};
use barnabas::authoring::scaffold::{build_plugin, new_plugin};
use barnabas::authoring::{AuthoringError, TestPlugin, test_plugin};
use clap::Subcommand;

/// `barnabas plugin ...`.
#[derive(Subcommand)]
pub enum PluginCommand {
    /// Write a new plugin crate in directory NAME (it must not exist): the plugin, a native unit
    /// test, sample input and expected results, and the SDK this binary carries, so it builds
    /// offline.
    New {
        /// The directory; its last component names the plugin.
        name: PathBuf,
        /// Depend on the SDK at this path instead of writing a copy into the crate.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a plugin crate for wasm32-wasip2 (adding the target if missing) and print the
    /// component's path and sha256.
    Build {
        /// The crate's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Run a plugin on messages from a JSON-lines file, in the proxy's sandbox and limits, with
    /// no broker. Prints each result as a JSON line; with --expect, compares and exits 1 on any
    /// difference.
    Test {
        /// The component (.wasm).
        wasm: PathBuf,
        /// The messages, one JSON object per line (docs/plugin-authoring.md).
        #[arg(long)]
        input: PathBuf,
        /// The plugin's config, as JSON (what `config:` holds in routes.yaml).
        #[arg(long, default_value = "null")]
        config: String,
        /// The expected results, one per message.
        #[arg(long)]
        expect: Option<PathBuf>,
        /// CPU deadline per call (routes.yaml `timeout_ms`).
        #[arg(long, default_value_t = barnabas::config::DEFAULT_PLUGIN_TIMEOUT_MS)]
        timeout_ms: u64,
        /// Memory cap (routes.yaml `memory_mb`).
        #[arg(long, default_value_t = barnabas::config::DEFAULT_PLUGIN_MEMORY_MB)]
        memory_mb: u64,
    },
}

pub fn plugin(command: PluginCommand) -> ExitCode {
    match command {
        PluginCommand::New { name, sdk } => match new_plugin(&name, sdk.as_deref()) {
            Ok(_) => {
                println!(
                    "created plugin {} ; next: barnabas plugin build {}",
                    name.display(),
                    name.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        PluginCommand::Build { dir } => match build_plugin(&dir) {
            Ok(built) => {
                println!("{}", built.wasm.display());
                println!("sha256 {}", built.sha256);
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        PluginCommand::Test {
            wasm,
            input,
            config,
            expect,
            timeout_ms,
            memory_mb,
        } => {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&config) {
                eprintln!("error: --config is not JSON: {e}");
                return ExitCode::from(2);
            }
            let mut test = TestPlugin::new(wasm, input);
            test.config_json = config;
            test.expect = expect;
            test.timeout = Duration::from_millis(timeout_ms);
            test.memory_bytes = usize::try_from(memory_mb << 20).unwrap_or(usize::MAX);
            let mut out = std::io::stdout().lock();
            let mut report = std::io::stderr().lock();
            match test_plugin(&test, &mut out, &mut report) {
                Ok(c) if c.different > 0 => ExitCode::FAILURE,
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
    }
}

/// `barnabas record`.
#[allow(clippy::too_many_arguments)]
pub fn record_command(
    route: String,
    count: u64,
    out: PathBuf,
    admin: Option<SocketAddr>,
    config: PathBuf,
    outputs: bool,
    max_bytes: u64,
    timeout: u64,
) -> ExitCode {
    let admin = match admin.map_or_else(|| admin_of(&config), Ok) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let request = Record {
        admin,
        route,
        count,
        max_bytes,
        outputs,
        timeout: Duration::from_secs(timeout),
        out,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(AuthoringError::Other(e.to_string())),
    };
    match runtime.block_on(record(&request)) {
        Ok(n) => {
            eprintln!(
                "recorded {n} messages of route {:?} to {}",
                request.route,
                request.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `barnabas replay`.
pub fn replay_command(
    file: PathBuf,
    config: PathBuf,
    route: String,
    plugins: Vec<String>,
) -> ExitCode {
    let mut swapped = Vec::new();
    for p in plugins {
        let Some((name, wasm)) = p.split_once('=') else {
            eprintln!("error: --plugin {p:?} is not NAME=FILE.wasm");
            return ExitCode::from(2);
        };
        swapped.push((name.to_string(), PathBuf::from(wasm)));
    }
    let request = Replay {
        file,
        config,
        route,
        plugins: swapped,
    };
    match replay(&request, &mut std::io::stdout().lock()) {
        Ok(c) if c.different > 0 => ExitCode::FAILURE,
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(e: AuthoringError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}
