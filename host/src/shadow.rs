//! Shadow versions of plugins: a route's `shadow:` chain runs beside the serving chain on every
//! message, after it and on a task of its own, so no message's acknowledgement waits for it and
//! nothing it makes leaves the proxy. Its result is compared with the serving chain's: the
//! counts go to `barnabas_shadow_messages_total`, and the latest differences to the log
//! (rate-limited) and to `/status`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::authoring::jsonl::ResultLine;
use crate::message::Message;
use crate::metrics::{Metrics, PluginMeters};
use crate::pipeline::{Chain, Item, LogLimit, Stop, run_chain};
use crate::plugin::Plugin;
use crate::router::Route;

/// Shadow runs under way at once, per snapshot; beyond it a message is not shadowed (and counted
/// as skipped) rather than queued, so a slow shadow cannot grow memory.
pub const MAX_SHADOW_RUNS: usize = 64;

/// Differences kept per route for `/status`.
const SAMPLES: usize = 10;

static DIFFERENCES_LOGGED: LogLimit = LogLimit::new();

/// The latest differences of every route's shadow, shared by every snapshot.
#[derive(Default)]
pub struct ShadowReports {
    samples: Mutex<HashMap<String, VecDeque<Value>>>,
}

impl ShadowReports {
    fn difference(&self, route: &str, msg: &Message, serving: &ResultLine, shadow: &ResultLine) {
        let sample = json!({
            "topic": msg.source.topic,
            "client_id": &*msg.source.client_id,
            "serving": serving,
            "shadow": shadow,
        });
        if DIFFERENCES_LOGGED.allow() {
            tracing::info!(route, topic = %msg.source.topic, serving = %serving.to_line(), shadow = %shadow.to_line(), "shadow differs");
        }
        if let Ok(mut samples) = self.samples.lock() {
            let kept = samples.entry(route.to_string()).or_default();
            if kept.len() == SAMPLES {
                kept.pop_front();
            }
            kept.push_back(sample);
        }
    }

    /// The latest differences, by route, oldest first.
    pub fn samples(&self) -> Value {
        self.samples
            .lock()
            .map(|s| {
                s.iter()
                    .map(|(route, kept)| {
                        (
                            route.clone(),
                            Value::from(kept.iter().cloned().collect::<Vec<_>>()),
                        )
                    })
                    .collect::<serde_json::Map<_, _>>()
                    .into()
            })
            .unwrap_or_default()
    }
}

/// What a shadow run needs, all owned: it outlives the message's dispatch.
pub struct Shadow {
    /// The snapshot's plugins.
    pub plugins: Arc<HashMap<String, Arc<Plugin>>>,
    /// Their meters (a shadow plugin's calls count under its own name).
    pub meters: Arc<HashMap<String, PluginMeters>>,
    /// Where results are counted.
    pub metrics: Arc<Metrics>,
    /// Where differences are kept.
    pub reports: Arc<ShadowReports>,
    /// Bounds the runs under way.
    pub slots: Arc<Semaphore>,
}

impl Shadow {
    /// Starts the shadow chain of `route` on `msg`, to be compared with `serving`, what the
    /// serving chain made of it. Returns at once.
    pub fn start(
        &self,
        route: &Route,
        chain: &[String],
        msg: &Message,
        serving: &Result<Vec<Item>, Stop>,
    ) {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.metrics.shadow(&route.name, "skipped");
            return;
        };
        let serving = ResultLine::of_chain(serving);
        let (plugins, meters, metrics, reports) = (
            self.plugins.clone(),
            self.meters.clone(),
            self.metrics.clone(),
            self.reports.clone(),
        );
        let route = route.clone();
        let chain = chain.to_vec();
        let msg = msg.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let shadow = run_chain(&plugins, Some(&meters), &Chain::of(&route, &chain), &msg).await;
            let shadow = ResultLine::of_chain(&shadow);
            if shadow.same_as(&serving) {
                metrics.shadow(&route.name, "same");
            } else {
                metrics.shadow(&route.name, "different");
                reports.difference(&route.name, &msg, &serving, &shadow);
            }
        });
    }
}
