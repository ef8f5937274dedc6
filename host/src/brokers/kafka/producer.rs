//! The Kafka destination: an idempotent `acks=all` producer.
//!
//! An idempotent producer can end up unable to deliver anything again. librdkafka may report a
//! fatal error, after which it fails every record and expects the application to make a new
//! producer. Or, after a request timed out, it bumps its producer epoch by itself (KIP-360), and a
//! broker that does not accept such a bump answers every batch with "fenced": librdkafka bumps
//! again, fails the batch, and so on until the 16-bit epoch wraps around, at which point a broker
//! may take the restarted sequence numbers for duplicates of records it already holds and report
//! new records as delivered without storing them. So the first failure that shows the producer in
//! either state replaces it: what was handed to the old one is purged (its clients get a failure
//! and resend), and the next records go to a new producer with a new producer id.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::FutureExt;
use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};

use crate::brokers::{Ack, BrokerError, Delivery, Destination};
use crate::config::{DEFAULT_KAFKA_MESSAGE_TIMEOUT_MS, DEFAULT_KAFKA_TOPIC_PROPAGATION_MS};
use crate::message::well_known;

/// How long a send may wait for room in librdkafka's local queue before it counts as failed.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait before trying a full queue again.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

/// How long a readiness probe waits for the cluster's metadata.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A Kafka cluster this proxy produces to.
pub struct KafkaDestination {
    shared: Arc<Shared>,
}

/// What a destination and its pending acknowledgements share.
struct Shared {
    /// What every producer of this destination is made from.
    config: ClientConfig,
    name: String,
    /// The producer new records go to.
    producer: ArcSwap<FutureProducer>,
    /// Held while a broken producer is replaced, so that it is replaced once.
    renewing: Mutex<()>,
    /// Counts the replacements.
    renewals: Counter,
}

impl Shared {
    /// Replaces `failed`, which just failed a record with `error`, by a new producer if it is still
    /// the current one and is broken for good (see the module's documentation). Returns whether
    /// the current producer differs from `failed` afterwards.
    ///
    /// Pending acknowledgements hold the producer weakly: the last strong reference is the one
    /// a replacement drops on a thread of its own, since dropping a producer blocks.
    fn renew_if_broken(&self, failed: &Weak<FutureProducer>, error: &KafkaError) -> bool {
        let Ok(_turn) = self.renewing.lock() else {
            return false;
        };
        let current = self.producer.load_full();
        if !std::ptr::eq(Weak::as_ptr(failed), Arc::as_ptr(&current)) {
            return true;
        }
        let reason = match current.client().fatal_error() {
            Some((code, reason)) => format!("fatal error {code:?}: {reason}"),
            None if matches!(
                error.rdkafka_error_code(),
                Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
            ) =>
            {
                format!("the broker refuses its producer epoch: {error}")
            }
            None => return false,
        };
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(
                    destination = %self.name, reason,
                    "Kafka producer cannot deliver any more: replaced by a new one"
                );
                let old = self.producer.swap(Arc::new(fresh));
                self.renewals.inc();
                drop(current);
                // Its records fail now rather than at their timeout. Purging and dropping wait
                // for librdkafka's threads, so both happen on a thread of their own, which also
                // waits for a send that still holds the producer to let go of it.
                let dropping = std::thread::Builder::new()
                    .name("kafka-producer-drop".into())
                    .spawn(move || {
                        old.purge(PurgeConfig::default().queue().inflight());
                        let deadline = std::time::Instant::now() + QUEUE_TIMEOUT;
                        while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        drop(old);
                    });
                if let Err(error) = dropping {
                    tracing::warn!(%error, "cannot start a thread to drop the old producer");
                }
                true
            }
            Err(error) => {
                tracing::error!(
                    destination = %self.name, %error,
                    "Kafka producer hit a fatal error and a new one cannot be made"
                );
                false
            }
        }
    }
}

impl KafkaDestination {
    /// Builds the producer. It connects in the background: an unreachable cluster shows up as
    /// failed deliveries, not here.
    pub fn new(
        name: &str,
        bootstrap: &str,
        options: &BTreeMap<String, String>,
        renewals: Counter,
    ) -> Result<Self, BrokerError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("client.id", format!("barnabas-{name}"))
            // The client is acknowledged on this producer's delivery report: it must mean the
            // record is committed to every in-sync replica, written once.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                DEFAULT_KAFKA_MESSAGE_TIMEOUT_MS.to_string(),
            )
            // A record for a topic the cluster says does not exist fails as unknown (permanent)
            // after this long, within `message.timeout.ms`, instead of timing out (retriable).
            .set(
                "topic.metadata.propagation.max.ms",
                DEFAULT_KAFKA_TOPIC_PROPAGATION_MS.to_string(),
            );
        // `config` refuses options that weaken these unless the destination sets
        // `allow_weaker_delivery: true`.
        for (key, value) in options {
            config.set(key, value);
        }
        let producer: FutureProducer = config
            .create()
            .map_err(|e| BrokerError::Permanent(format!("cannot create Kafka producer: {e}")))?;
        Ok(KafkaDestination {
            shared: Arc::new(Shared {
                config,
                name: name.to_string(),
                producer: ArcSwap::from_pointee(producer),
                renewing: Mutex::new(()),
                renewals,
            }),
        })
    }
}

impl Destination for KafkaDestination {
    fn enqueue(&self, delivery: Delivery) -> BoxFuture<'_, Result<Ack, BrokerError>> {
        async move {
            check_topic(&delivery.address)?;
            let own = delivery
                .headers
                .iter()
                .map(|h| (h.name.as_str(), h.value.as_ref()));
            let mut headers = OwnedHeaders::new_with_capacity(delivery.headers.len() + 4);
            for (key, value) in own.chain(
                delivery
                    .source
                    .origin_headers()
                    .map(|(n, v)| (n as &str, v)),
            ) {
                headers = headers.insert(KafkaHeader {
                    key,
                    value: Some(value),
                });
            }
            let mut record = FutureRecord::<[u8], [u8]>::to(&delivery.address)
                .payload(delivery.payload.as_ref())
                .headers(headers);
            if let Some(key) = &delivery.key {
                record = record.key(key.as_ref());
            }
            // An AMQP sender may choose the partition with the `x-opt-kafka-partition` annotation.
            if let Some(p) = delivery
                .headers
                .iter()
                .find(|h| h.name == well_known::KAFKA_PARTITION_ANNOTATION)
                .and_then(|h| {
                    std::str::from_utf8(&h.value)
                        .ok()?
                        .trim()
                        .parse::<i32>()
                        .ok()
                })
            {
                record = record.partition(p);
            }
            // `send_result` puts the record in librdkafka's queue now, so records enter it in the
            // order of the calls; only a full queue makes the call wait (and the next one with it).
            let give_up = tokio::time::Instant::now() + QUEUE_TIMEOUT;
            let mut producer = self.shared.producer.load_full();
            let mut renewed = false;
            loop {
                match producer.send_result(record) {
                    Ok(report) => {
                        let topic = delivery.address.clone();
                        let shared = self.shared.clone();
                        let producer = Arc::downgrade(&producer);
                        let ack = async move {
                            match report.await {
                                Ok(Ok(_)) => Ok(()),
                                Ok(Err((e, _))) => {
                                    shared.renew_if_broken(&producer, &e);
                                    Err(classify(&topic, e))
                                }
                                Err(_) => Err(BrokerError::Retriable(
                                    "Kafka producer closed before the delivery report".into(),
                                )),
                            }
                        };
                        return Ok(ack.boxed());
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), again))
                        if tokio::time::Instant::now() < give_up =>
                    {
                        record = again;
                        tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                    }
                    // A broken producer refuses every record: once, try a new one.
                    Err((e, again))
                        if !renewed
                            && self.shared.renew_if_broken(&Arc::downgrade(&producer), &e) =>
                    {
                        tracing::debug!(error = %e, "retrying on the renewed Kafka producer");
                        renewed = true;
                        record = again;
                        producer = self.shared.producer.load_full();
                    }
                    Err((e, _)) => return Err(classify(&delivery.address, e)),
                }
            }
        }
        .boxed()
    }

    fn probe(&self) -> BoxFuture<'static, Result<(), BrokerError>> {
        let producer = self.shared.producer.load_full();
        async move {
            // A metadata request is the cheapest round trip that proves a broker answers.
            // librdkafka's call blocks, so it runs on the blocking pool.
            tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(None, PROBE_TIMEOUT)
                    .map(|_| ())
                    .map_err(|e| BrokerError::Retriable(format!("Kafka metadata request: {e}")))
            })
            .await
            .map_err(|e| BrokerError::Retriable(format!("probe task failed: {e}")))?
        }
        .boxed()
    }
}

/// Kafka topic names: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn check_topic(topic: &str) -> Result<(), BrokerError> {
    let valid = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(BrokerError::Permanent(format!(
            "{topic:?} is not a valid Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"
        )))
    }
}

fn classify(topic: &str, e: KafkaError) -> BrokerError {
    let permanent = matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidTopic
                // The cluster's metadata says the topic does not exist (after
                // `topic.metadata.propagation.max.ms`): a resend cannot help until someone
                // creates it, and a 3.1.1 client that resent it forever would block everything
                // it publishes after it.
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::InvalidRequiredAcks
        )
    );
    let text = format!("Kafka topic {topic:?}: {e}");
    if permanent {
        BrokerError::Permanent(text)
    } else {
        BrokerError::Retriable(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(check_topic("telemetry.acme").is_ok());
        assert!(check_topic("a_b-c.9").is_ok());
        assert!(matches!(check_topic("a/b"), Err(BrokerError::Permanent(_))));
        assert!(check_topic("").is_err());
        assert!(check_topic("..").is_err());
        assert!(check_topic(&"x".repeat(250)).is_err());
    }

    /// librdkafka is built with TLS and SASL PLAIN and SCRAM: a producer for a SASL_SSL cluster
    /// is created (without OpenSSL it is refused at once: "not built with SSL support").
    #[tokio::test]
    async fn tls_and_sasl_options_are_accepted() {
        let options: BTreeMap<String, String> = [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "proxy"),
            ("sasl.password", "secret"),
            ("ssl.endpoint.identification.algorithm", "https"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let created = KafkaDestination::new("t", "127.0.0.1:1", &options, Counter::default());
        assert!(created.is_ok(), "{:?}", created.err());
        let plain = [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "PLAIN"),
            ("sasl.username", "proxy"),
            ("sasl.password", "secret"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let created = KafkaDestination::new("t", "127.0.0.1:1", &plain, Counter::default());
        assert!(created.is_ok(), "{:?}", created.err());
    }
}
