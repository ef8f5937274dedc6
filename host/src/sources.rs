//! Routes that read from a broker (`from: "kafka:commands"`, `from: "rabbit:/queue/orders-out"`):
//! their readers, kept in step with the config, and what the readers share.
//!
//! One reader runs per source route of the snapshot serving now ([`KafkaSource`] for a Kafka
//! destination, [`AmqpSource`] for an AMQP broker). A reload that adds a source route starts its
//! reader; one that removes it, or changes what it reads, stops the old reader (after its
//! records under way settle) before a new one starts. A change to the route's plugins, `to:`,
//! `qos`, `ttl_ms` or `undelivered` needs no restart: the reader takes the route from the
//! serving snapshot for every record.
//!
//! Every reader keeps the same promise: a record (a queue's message) is taken off its source
//! only once it is settled, that is, every subscriber it matched acknowledged it, or it was
//! reported to the route's `undelivered` target with a status (and that report acknowledged).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use tokio::sync::watch;

use crate::brokers::amqp::{AmqpConfig, AmqpSource};
use crate::brokers::kafka::KafkaSource;
use crate::brokers::{BrokerError, Delivery};
use crate::message::{Header, Message, Outcome, Rejection};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;

/// The header of an undelivered record saying what happened: `not-connected` (no client
/// subscribed), `timed-out` (not acknowledged within `ttl_ms`), `refused` (a client or
/// destination refused it), `rejected` (a plugin rejected it or failed), `failed` (a client went
/// away or its queue was full).
pub const UNDELIVERED_STATUS: &str = "barnabas.undelivered.status";
/// The header of an undelivered record saying why, in words.
pub const UNDELIVERED_REASON: &str = "barnabas.undelivered.reason";

/// What a source route reads, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSpec {
    /// The route's name.
    pub route: String,
    /// The Kafka topic or broker address read.
    pub address: String,
    /// `barnabas.INSTANCE.ROUTE`: the Kafka consumer group, or the AMQP link name.
    pub group: String,
    /// How long a record may take to be settled.
    pub ttl: Duration,
    /// The broker.
    pub from: SourceFrom,
}

/// The broker a source route reads from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceFrom {
    /// A Kafka cluster: `host:port,...`, and the destination's librdkafka options.
    Kafka {
        bootstrap: String,
        options: BTreeMap<String, String>,
    },
    /// An AMQP 1.0 broker.
    Amqp(AmqpConfig),
}

/// A running reader of either kind.
enum Running {
    Kafka(KafkaSource),
    Amqp(AmqpSource),
}

impl Running {
    fn spec(&self) -> &SourceSpec {
        match self {
            Running::Kafka(s) => s.spec(),
            Running::Amqp(s) => s.spec(),
        }
    }

    async fn stop(self) {
        match self {
            Running::Kafka(s) => s.stop().await,
            Running::Amqp(s) => s.stop().await,
        }
    }
}

/// Runs the readers until `shutdown`, then stops them all.
pub async fn run(
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut generations = pipeline.generations();
    let mut running: HashMap<String, Running> = HashMap::new();
    loop {
        reconcile(&pipeline, &metrics, &mut running, &shutdown).await;
        tokio::select! {
            changed = generations.changed() => if changed.is_err() { break },
            _ = crate::stopped(&mut shutdown) => break,
        }
    }
    join_all(running.into_values().map(Running::stop)).await;
}

/// Starts and stops readers so that exactly the serving snapshot's source routes run.
async fn reconcile(
    pipeline: &Arc<Pipeline>,
    metrics: &Arc<Metrics>,
    running: &mut HashMap<String, Running>,
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
            .map(Running::stop),
    )
    .await;
    for (route, spec) in wanted {
        if running.contains_key(&route) {
            continue;
        }
        let started = match &spec.from {
            SourceFrom::Kafka { .. } => {
                KafkaSource::start(spec, pipeline.clone(), metrics.clone(), shutdown.clone())
                    .map(Running::Kafka)
            }
            SourceFrom::Amqp(_) => Ok(Running::Amqp(AmqpSource::start(
                spec,
                pipeline.clone(),
                metrics.clone(),
                shutdown.clone(),
            ))),
        };
        match started {
            Ok(source) => {
                running.insert(route, source);
            }
            Err(error) => tracing::error!(route, %error, "source route not reading"),
        }
    }
}

/// The status and reason of a record that did not reach everyone it should have; `None` when it
/// did, or when a plugin dropped it on purpose.
pub(crate) fn undelivered(outcome: &Outcome, timed_out: bool) -> Option<(&'static str, String)> {
    match outcome {
        Outcome::Delivered | Outcome::Dropped(_) => None,
        Outcome::Rejected(Rejection::NoSubscriber, r) => Some(("not-connected", r.clone())),
        Outcome::Rejected(Rejection::Undeliverable, r) => Some(("refused", r.clone())),
        Outcome::Rejected(_, r) => Some(("rejected", r.clone())),
        Outcome::Failed(r) if timed_out => Some(("timed-out", r.clone())),
        Outcome::Failed(r) => Some(("failed", r.clone())),
    }
}

/// Sends the record, as it was read, with its status and reason, to the route's `undelivered`
/// target, until that destination acknowledges it. `false` when the proxy stopped first.
pub(crate) async fn report_undelivered(
    pipeline: &Pipeline,
    route: &str,
    message: &Message,
    status: &str,
    reason: &str,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let mut backoff = Duration::from_millis(200);
    loop {
        let snapshot = pipeline.snapshot();
        let target = snapshot
            .routes()
            .named(route)
            .and_then(|r| r.source.as_ref())
            .and_then(|s| s.undelivered.clone());
        let Some(target) = target else {
            // `undelivered: drop` (or the route is gone): nothing to send.
            return true;
        };
        let address = match target.address.render(
            &message.topic,
            message.key.as_deref(),
            &message.headers,
        ) {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(route, %error, "undelivered record dropped: its address cannot be filled");
                return true;
            }
        };
        let mut headers = message.headers.to_vec();
        headers.push(Header::new(
            UNDELIVERED_STATUS,
            Bytes::from(status.to_string()),
        ));
        headers.push(Header::new(
            UNDELIVERED_REASON,
            Bytes::from(reason.to_string()),
        ));
        let delivery = Delivery {
            address,
            key: message.key.clone(),
            headers: headers.into(),
            payload: message.payload.clone(),
            source: message.source.clone(),
        };
        let result = match snapshot.destination(&target.destination) {
            Some(d) => match d.enqueue(delivery).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            },
            None => Err(BrokerError::Permanent(format!(
                "destination {:?} is not configured",
                target.destination
            ))),
        };
        match result {
            Ok(()) => return true,
            Err(BrokerError::Retriable(error)) => {
                tracing::warn!(route, %error, "undelivered record not taken yet; trying again");
            }
            Err(error) => {
                tracing::warn!(route, %error, "undelivered record refused; dropped");
                return true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = crate::stopped(&mut stop) => return false,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
