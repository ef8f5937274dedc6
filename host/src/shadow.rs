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
        // Compared as they are (payloads shared, not copied); turned into JSON only when they
        // differ.
        let serving = serving.clone();
        let (plugins, meters, metrics, reports) = (
            self.plugins.clone(),
            self.meters.clone(),
            self.metrics.clone(),
            self.reports.clone(),
        );
        let (route_name, on_error) = (route.name.clone(), route.on_error.clone());
        let direction = Chain::of(route, chain).direction;
        let chain = chain.to_vec();
        let msg = msg.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let run = Chain {
                route: &route_name,
                direction,
                on_error: &on_error,
                plugins: &chain,
            };
            let shadow = run_chain(&plugins, Some(&meters), &run, &msg).await;
            if same(&serving, &shadow) {
                metrics.shadow(&route_name, "same");
            } else {
                metrics.shadow(&route_name, "different");
                let serving = ResultLine::of_chain(&serving);
                let shadow = ResultLine::of_chain(&shadow);
                reports.difference(&route_name, &msg, &serving, &shadow);
            }
        });
    }
}

/// Whether two chains (one with some plugins in other versions) decided the same: equal outputs
/// (whichever plugin chose their route output), or a drop or reject for the same reason apart
/// from which plugin gave it, or both failed.
fn same(a: &Result<Vec<Item>, Stop>, b: &Result<Vec<Item>, Stop>) -> bool {
    use crate::message::{Outcome, Rejection};
    /// The reason a plugin gave, without the `dropped by plugin "NAME": ` the chain adds.
    fn given(reason: &str) -> &str {
        reason.split_once("\": ").map_or(reason, |(_, r)| r)
    }
    match (a, b) {
        (Ok(a), Ok(b)) => {
            a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| {
                    x.output == y.output
                        && x.topic == y.topic
                        && x.headers == y.headers
                        && x.key == y.key
                        && x.payload == y.payload
                })
        }
        (Err(Stop::DeadLetter(..)), Err(Stop::DeadLetter(..))) => true,
        (Err(Stop::Outcome(x)), Err(Stop::Outcome(y))) => match (x, y) {
            (Outcome::Dropped(x), Outcome::Dropped(y))
            | (Outcome::Rejected(Rejection::Plugin, x), Outcome::Rejected(Rejection::Plugin, y)) => {
                given(x) == given(y)
            }
            (Outcome::Rejected(Rejection::Plugin, _), _)
            | (_, Outcome::Rejected(Rejection::Plugin, _)) => false,
            (
                Outcome::Rejected(..) | Outcome::Failed(_),
                Outcome::Rejected(..) | Outcome::Failed(_),
            ) => true,
            _ => false,
        },
        _ => false,
    }
}
