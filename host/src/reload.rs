//! Reload: read routes.yaml again, build a new snapshot next to the serving one, and swap it in
//! whole, or change nothing and say why.
//!
//! Unchanged plugins (same file digest, config and limits) and destinations (same settings) are
//! carried over, so a reload neither recompiles them nor reconnects to brokers. Messages under way
//! finish on the snapshot they started on. Listener changes need a restart and are refused as
//! such, never half-applied.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, Listeners};
use crate::pipeline::{Pipeline, Resources, Snapshot};

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new snapshot serves every message from now on.
    Applied {
        /// Its generation.
        generation: u64,
    },
    /// The file or a plugin is wrong; the previous snapshot keeps serving.
    Rejected(String),
    /// The change needs a restart (listener addresses or limits); nothing was applied.
    RestartNeeded(String),
}

/// Owns what building a snapshot needs, and rebuilds on request.
pub struct Reloader {
    // Declared (so dropped) before `resources`: producers go before the embedded Kafka.
    pipeline: Arc<Pipeline>,
    path: PathBuf,
    listeners: Listeners,
    resources: Resources,
}

impl Reloader {
    /// A reloader for the proxy started from `path` with `listeners`.
    pub fn new(
        path: PathBuf,
        listeners: Listeners,
        resources: Resources,
        pipeline: Arc<Pipeline>,
    ) -> Self {
        Reloader {
            path,
            listeners,
            resources,
            pipeline,
        }
    }

    /// The embedded Kafka's bootstrap address, once started.
    pub fn embedded_kafka_bootstrap(&self) -> Option<String> {
        self.resources
            .embedded_kafka
            .as_ref()
            .map(|k| k.bootstrap().to_string())
    }

    /// Reads, validates and builds the config, then swaps it in. Blocks while plugins compile:
    /// call it off the async worker threads.
    pub fn reload(&mut self) -> ReloadOutcome {
        let outcome = self.try_reload();
        match &outcome {
            ReloadOutcome::Applied { generation } => {
                tracing::info!(config = %self.path.display(), generation, "reload applied")
            }
            ReloadOutcome::Rejected(errors) => {
                tracing::error!(config = %self.path.display(), "reload rejected, previous routes keep serving:\n{errors}")
            }
            ReloadOutcome::RestartNeeded(why) => {
                tracing::warn!(config = %self.path.display(), "reload not applied: {why}")
            }
        }
        outcome
    }

    fn try_reload(&mut self) -> ReloadOutcome {
        let config = match Config::load(&self.path) {
            Ok(c) => c,
            Err(e) => return ReloadOutcome::Rejected(e.to_string()),
        };
        if config.listeners != self.listeners {
            return ReloadOutcome::RestartNeeded(
                "listener settings changed; restart the proxy to apply them".into(),
            );
        }
        let current = self.pipeline.snapshot();
        let generation = current.generation + 1;
        match Snapshot::build(&config, generation, &mut self.resources, Some(&current)) {
            Ok(snapshot) => {
                self.pipeline.swap(snapshot);
                ReloadOutcome::Applied { generation }
            }
            Err(e) => ReloadOutcome::Rejected(e.to_string()),
        }
    }
}
