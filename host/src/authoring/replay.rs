//! `barnabas replay`: recorded messages through a route's plugin chain, with no broker, the
//! serving version against a new one.
//!
//! The old side is the result recorded with each message (`barnabas record --outputs`) or, for a
//! message recorded without one, the route's chain as routes.yaml has it now. The new side is the
//! same chain with some plugins swapped for new builds (`--plugin NAME=new.wasm`, each keeping
//! its `config` and limits from routes.yaml). Every message whose verdict or outputs differ is
//! printed with both results.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::jsonl::ResultLine;
use super::{AuthoringError, Comparison, read_messages, runtime, write_line};
use crate::config::Config;
use crate::pipeline::{Chain, run_chain};
use crate::plugin::{Plugin, PluginEngine};

/// What `barnabas replay` runs.
pub struct Replay {
    /// The recorded messages.
    pub file: PathBuf,
    /// The routes file.
    pub config: PathBuf,
    /// The route whose chain runs.
    pub route: String,
    /// Plugins of the chain replaced by new builds, by name.
    pub plugins: Vec<(String, PathBuf)>,
}

/// Runs the replay, writing each difference and a summary to `out`.
pub fn replay(replay: &Replay, out: &mut dyn Write) -> Result<Comparison, AuthoringError> {
    let config = Config::load(&replay.config).map_err(|e| AuthoringError::Other(e.to_string()))?;
    let Some(route) = config.routes.named(&replay.route) else {
        let names: Vec<&str> = config
            .routes
            .routes()
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        return Err(AuthoringError::Other(format!(
            "{} has no route {:?} (routes: {})",
            replay.config.display(),
            replay.route,
            names.join(", ")
        )));
    };
    for (name, _) in &replay.plugins {
        if !route.plugins.contains(name) {
            return Err(AuthoringError::Other(format!(
                "route {:?} does not run plugin {name:?} (its plugins: {})",
                route.name,
                route.plugins.join(", ")
            )));
        }
    }
    let messages = read_messages(&replay.file)?;
    let engine = PluginEngine::new().map_err(|e| AuthoringError::Other(e.to_string()))?;
    let load = |name: &str, wasm: Option<&Path>| -> Result<Arc<Plugin>, AuthoringError> {
        let mut p = config
            .plugins
            .get(name)
            .cloned()
            .ok_or_else(|| AuthoringError::Other(format!("plugin {name:?} is not defined")))?;
        if let Some(wasm) = wasm {
            p.wasm = wasm.to_path_buf();
        }
        Plugin::load(&engine, &p)
            .map(Arc::new)
            .map_err(|e| AuthoringError::Load(format!("plugin {name:?}: {e}")))
    };
    let mut old = HashMap::new();
    let mut new = HashMap::new();
    for name in &route.plugins {
        let current = load(name, None)?;
        let replacement = replay
            .plugins
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, wasm)| load(name, Some(wasm)))
            .transpose()?;
        new.insert(name.clone(), replacement.unwrap_or_else(|| current.clone()));
        old.insert(name.clone(), current);
    }
    let chain = Chain::of(route, &route.plugins);
    let runtime = runtime()?;
    let mut comparison = Comparison::default();
    let mut recorded = 0;
    for (line_no, line) in &messages {
        let msg = line.message().map_err(|cause| AuthoringError::Line {
            path: replay.file.clone(),
            line: *line_no,
            cause,
        })?;
        let before = match &line.result {
            Some(r) => {
                recorded += 1;
                r.clone()
            }
            None => ResultLine::of_chain(&runtime.block_on(run_chain(&old, None, &chain, &msg))),
        };
        let after = ResultLine::of_chain(&runtime.block_on(run_chain(&new, None, &chain, &msg)));
        comparison.messages += 1;
        if before != after {
            comparison.different += 1;
            write_line(
                out,
                &format!(
                    "{}:{line_no}: topic {:?}: {} -> {}\n- {}\n+ {}",
                    replay.file.display(),
                    line.topic,
                    before.verdict(),
                    after.verdict(),
                    before.to_line(),
                    after.to_line()
                ),
            )?;
        }
    }
    let against = match (recorded, comparison.messages) {
        (0, _) => "the current chain".to_string(),
        (r, m) if r == m => "the recorded results".to_string(),
        (r, m) => format!(
            "the recorded results ({r}) and the current chain ({})",
            m - r
        ),
    };
    write_line(
        out,
        &format!(
            "{} messages replayed on route {:?} against {against}: {} different, {} the same",
            comparison.messages,
            route.name,
            comparison.different,
            comparison.messages - comparison.different
        ),
    )?;
    Ok(comparison)
}
