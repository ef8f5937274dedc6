//! What a plugin author runs besides the proxy: `barnabas plugin new | build | test`,
//! `barnabas replay` and the client side of `barnabas record`. None of it is on the data path;
//! it shares the proxy's own pieces (the plugin sandbox, [`crate::pipeline::run_chain`], the
//! config compiler), so a plugin passes here exactly when it would behave the same in the proxy.
//!
//! - [`jsonl`]: the JSON-lines message format all of them read and write.
//! - [`scaffold`]: a new plugin crate, and building it for `wasm32-wasip2`.
//! - [`test_plugin`]: one plugin on messages from a file, against expected results.
//! - [`replay`]: recorded messages through a route's chain, old version against new.
//! - [`record`]: the client that asks a running proxy for a route's messages.

pub mod jsonl;
pub mod record;
pub mod replay;
pub mod scaffold;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{DEFAULT_PLUGIN_MEMORY_MB, DEFAULT_PLUGIN_TIMEOUT_MS, PluginConfig};
use crate::plugin::{Plugin, PluginEngine, PluginInput};
use jsonl::{MessageLine, ResultLine};

/// Why an authoring command could not do its work (as opposed to finding differences).
#[derive(Debug, thiserror::Error)]
pub enum AuthoringError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line of a JSON-lines file is wrong.
    #[error("{}:{line}: {cause}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// Its line, from 1.
        line: usize,
        /// What is wrong.
        cause: String,
    },
    /// A plugin could not be loaded.
    #[error("{0}")]
    Load(String),
    /// Anything else, said in full.
    #[error("{0}")]
    Other(String),
}

/// Reads a JSON-lines file of messages; blank lines and lines starting with `#` are skipped.
pub fn read_messages(path: &Path) -> Result<Vec<(usize, MessageLine)>, AuthoringError> {
    let io = |source| AuthoringError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut lines = Vec::new();
    for (i, text) in BufReader::new(file).lines().enumerate() {
        let text = text.map_err(io)?;
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let line = MessageLine::parse(trimmed).map_err(|cause| AuthoringError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            cause,
        })?;
        lines.push((i + 1, line));
    }
    Ok(lines)
}

/// Reads a JSON-lines file of results (`--expect`).
pub fn read_results(path: &Path) -> Result<Vec<ResultLine>, AuthoringError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthoringError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut results = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let result = serde_json::from_str(line).map_err(|e| AuthoringError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            cause: e.to_string(),
        })?;
        results.push(result);
    }
    Ok(results)
}

/// What `barnabas plugin test` runs.
pub struct TestPlugin {
    /// The component.
    pub wasm: PathBuf,
    /// The messages.
    pub input: PathBuf,
    /// The plugin's `config`, as JSON text.
    pub config_json: String,
    /// The results to compare with, one per message.
    pub expect: Option<PathBuf>,
    /// CPU deadline per call (as `timeout_ms` in routes.yaml).
    pub timeout: Duration,
    /// Memory cap (as `memory_mb`), in bytes.
    pub memory_bytes: usize,
}

impl TestPlugin {
    /// A test of `wasm` on `input` with the proxy's default limits and no config.
    pub fn new(wasm: PathBuf, input: PathBuf) -> Self {
        TestPlugin {
            wasm,
            input,
            config_json: "null".into(),
            expect: None,
            timeout: Duration::from_millis(DEFAULT_PLUGIN_TIMEOUT_MS),
            memory_bytes: usize::try_from(DEFAULT_PLUGIN_MEMORY_MB << 20).unwrap_or(usize::MAX),
        }
    }
}

/// How a `plugin test` or `replay` run compared.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Messages run.
    pub messages: usize,
    /// Messages whose result differs from what was expected (or from the old version).
    pub different: usize,
}

/// Runs the plugin on every message, printing each result as a JSON line to `out` and, with
/// `expect`, each difference (and a summary) to `report`. Loads the plugin the way the proxy does:
/// same sandbox, same limits, same `init`.
pub fn test_plugin(
    test: &TestPlugin,
    out: &mut dyn Write,
    report: &mut dyn Write,
) -> Result<Comparison, AuthoringError> {
    let messages = read_messages(&test.input)?;
    let expected = test.expect.as_deref().map(read_results).transpose()?;
    let engine = PluginEngine::new().map_err(|e| AuthoringError::Other(e.to_string()))?;
    let name = test
        .wasm
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    let plugin = Plugin::load(
        &engine,
        &PluginConfig {
            name,
            wasm: test.wasm.clone(),
            location: Default::default(),
            config_json: test.config_json.clone(),
            config_location: None,
            timeout: test.timeout,
            memory_bytes: test.memory_bytes,
        },
    )
    .map_err(|e| AuthoringError::Load(e.to_string()))?;
    let runtime = runtime()?;
    let mut comparison = Comparison::default();
    for (index, (line_no, line)) in messages.iter().enumerate() {
        let at = |cause| AuthoringError::Line {
            path: test.input.clone(),
            line: *line_no,
            cause,
        };
        let msg = line.message().map_err(at)?;
        let direction = line.direction().map_err(at)?;
        let result = runtime.block_on(plugin.call(PluginInput {
            source: &msg.source,
            direction,
            route: "test",
            topic: &msg.topic,
            qos: msg.source.qos,
            headers: &msg.headers,
            key: msg.key.as_ref(),
            payload: &msg.payload,
        }));
        let result = ResultLine::of_call(&result);
        write_line(out, &result.to_line())?;
        comparison.messages += 1;
        if let Some(expected) = &expected {
            match expected.get(index) {
                Some(e) if *e == result => {}
                Some(e) => {
                    comparison.different += 1;
                    write_line(
                        report,
                        &format!(
                            "{}:{line_no}: topic {:?}\n  expected {}\n  got      {}",
                            test.input.display(),
                            line.topic,
                            e.to_line(),
                            result.to_line()
                        ),
                    )?;
                }
                None => {
                    comparison.different += 1;
                    write_line(
                        report,
                        &format!(
                            "{}:{line_no}: no expected result for this message",
                            test.input.display()
                        ),
                    )?;
                }
            }
        }
    }
    if let Some(expected) = &expected {
        if expected.len() > comparison.messages {
            comparison.different += expected.len() - comparison.messages;
            write_line(
                report,
                &format!(
                    "{} expected results for {} messages",
                    expected.len(),
                    comparison.messages
                ),
            )?;
        }
        write_line(
            report,
            &format!(
                "{} messages: {} as expected, {} different",
                comparison.messages,
                comparison.messages.saturating_sub(comparison.different),
                comparison.different
            ),
        )?;
    }
    Ok(comparison)
}

/// A runtime for calling plugins from a command (their wall-clock bounds need its timers).
fn runtime() -> Result<tokio::runtime::Runtime, AuthoringError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AuthoringError::Other(format!("cannot start a runtime: {e}")))
}

fn write_line(out: &mut dyn Write, line: &str) -> Result<(), AuthoringError> {
    writeln!(out, "{line}").map_err(|source| AuthoringError::Io {
        path: PathBuf::from("<output>"),
        source,
    })
}
