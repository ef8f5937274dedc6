//! The readers of source routes (`from: "kafka:commands"`), kept in step with the config: one
//! [`KafkaSource`] per source route of the snapshot serving now. A reload that adds a source
//! route starts its reader; one that removes it, or changes what it reads, stops the old reader
//! (after its records under way settle and are committed) before a new one starts. A change to
//! the route's plugins, `to:`, `qos`, `ttl_ms` or `undelivered` needs no restart: the reader
//! takes the route from the serving snapshot for every record.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::join_all;
use tokio::sync::watch;

use crate::brokers::kafka::{KafkaSource, SourceSpec};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;

/// Runs the readers until `shutdown`, then stops them all.
pub async fn run(
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut generations = pipeline.generations();
    let mut running: HashMap<String, KafkaSource> = HashMap::new();
    loop {
        reconcile(&pipeline, &metrics, &mut running, &shutdown).await;
        tokio::select! {
            changed = generations.changed() => if changed.is_err() { break },
            _ = crate::stopped(&mut shutdown) => break,
        }
    }
    join_all(running.into_values().map(KafkaSource::stop)).await;
}

/// Starts and stops readers so that exactly the serving snapshot's source routes run.
async fn reconcile(
    pipeline: &Arc<Pipeline>,
    metrics: &Arc<Metrics>,
    running: &mut HashMap<String, KafkaSource>,
    shutdown: &watch::Receiver<bool>,
) {
    let wanted: HashMap<String, SourceSpec> = pipeline
        .snapshot()
        .sources()
        .into_iter()
        .map(|spec| (spec.route.clone(), spec))
        .collect();
    let stale: Vec<String> = running
        .iter()
        .filter(|(route, source)| wanted.get(*route) != Some(source.spec()))
        .map(|(route, _)| route.clone())
        .collect();
    join_all(
        stale
            .iter()
            .filter_map(|route| running.remove(route))
            .map(KafkaSource::stop),
    )
    .await;
    for (route, spec) in wanted {
        if running.contains_key(&route) {
            continue;
        }
        match KafkaSource::start(spec, pipeline.clone(), metrics.clone(), shutdown.clone()) {
            Ok(source) => {
                running.insert(route, source);
            }
            Err(error) => tracing::error!(route, %error, "source route not reading"),
        }
    }
}
