//! Kafka as a source: the reader behind a route with `from: "KAFKA-DESTINATION:TOPIC"`.
//!
//! One consumer per source route reads its topic in the consumer group
//! `barnabas.INSTANCE.ROUTE`, so every proxy instance reads every record and commits only its own
//! progress. Each record becomes a [`Message`] (key, headers and payload as they are) and runs
//! through the route on the snapshot serving at that moment: its plugins, then its `to:` (the
//! proxy's MQTT subscribers, or any destination). Records are handed over in partition order, so
//! each subscriber receives them in that order; the waits for acknowledgements overlap, up to
//! [`UNDER_WAY`] records at once.
//!
//! A record's offset is stored for the next commit only once the record is settled: every
//! subscriber it matched acknowledged it, or it counts as undelivered (nobody subscribed, a
//! client refused it, or `ttl_ms` passed) and the record describing why is acknowledged by the
//! `undelivered` destination (or the route says `drop`). Offsets are stored in order per
//! partition: one record still under way holds back the commits of the records after it. A
//! proxy that stops before a record is settled therefore reads it again when it starts; it may
//! deliver it twice, never skip it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::brokers::BrokerError;
use crate::message::{Header, Message, Outcome, Protocol, Source};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::sources::{SourceFrom, SourceSpec, report_undelivered, undelivered};

/// Records of one source route that may be between read and settled at once. Past it the
/// consumer stops reading until one settles: subscribers that do not keep up slow the reading
/// down instead of growing memory.
pub const UNDER_WAY: usize = 1000;

/// A running reader; dropping it does not stop it, [`KafkaSource::stop`] does.
pub struct KafkaSource {
    spec: SourceSpec,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl KafkaSource {
    /// Starts reading for `spec.route`. `shutdown` is the proxy's: once it turns, a record that
    /// failed (its clients are being disconnected) is left unsettled, to be read again.
    pub fn start(
        spec: SourceSpec,
        pipeline: Arc<Pipeline>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<KafkaSource, BrokerError> {
        let SourceFrom::Kafka { bootstrap, options } = &spec.from else {
            return Err(BrokerError::Permanent(format!(
                "route {:?} does not read from Kafka",
                spec.route
            )));
        };
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("group.id", &spec.group)
            // Each instance is the one member of its group for a route. After a crash its
            // restarted reader waits for the dead member's session to end before the partitions
            // are its own again: a short session keeps that wait short. (Static membership,
            // `group.instance.id`, would end the wait at once, but tansu 0.6 then delays the
            // first join by many seconds.)
            .set("session.timeout.ms", "10000")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            // Offsets are stored by the proxy once a record is settled, never on reading.
            .set("enable.auto.offset.store", "false")
            // A new group starts at the end: commands from before the proxy existed are stale.
            .set("auto.offset.reset", "latest")
            // Statistics (consumer lag among them) every 5 s, for `barnabas_source_lag`.
            .set("statistics.interval.ms", "5000");
        for (key, value) in options {
            config.set(key, value);
        }
        // The proxy needs these to keep its promise, whatever the options say.
        config.set("enable.auto.offset.store", "false");
        let context = SourceContext {
            route: spec.route.clone(),
            topic: spec.address.clone(),
            metrics: metrics.clone(),
        };
        let consumer: StreamConsumer<SourceContext> = config
            .create_with_context(context)
            .map_err(|e| BrokerError::Permanent(format!("cannot create a Kafka consumer: {e}")))?;
        consumer.subscribe(&[&spec.address]).map_err(|e| {
            BrokerError::Permanent(format!("cannot subscribe to {}: {e}", spec.address))
        })?;
        let (stop, stopped) = watch::channel(false);
        let consumer = Detached(Some(consumer));
        let task = tokio::spawn(read(
            consumer,
            spec.clone(),
            pipeline,
            metrics,
            stopped,
            shutdown,
        ));
        tracing::info!(
            route = spec.route,
            topic = spec.address,
            group = spec.group,
            "reading"
        );
        Ok(KafkaSource { spec, stop, task })
    }

    /// What it reads.
    pub fn spec(&self) -> &SourceSpec {
        &self.spec
    }

    /// Stops reading, waits for the records under way to settle (at most their `ttl_ms`), and
    /// commits what was settled.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Settled offsets per partition, stored in order.
#[derive(Default)]
struct Progress {
    partitions: HashMap<i32, VecDeque<(i64, bool)>>,
}

impl Progress {
    fn read(&mut self, partition: i32, offset: i64) {
        self.partitions
            .entry(partition)
            .or_default()
            .push_back((offset, false));
    }

    /// Marks `offset` settled; returns the highest offset whose records, and every one before
    /// it, are settled, when that moved.
    fn settled(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let queue = self.partitions.get_mut(&partition)?;
        if let Some(entry) = queue.iter_mut().find(|(o, _)| *o == offset) {
            entry.1 = true;
        }
        let mut last = None;
        while let Some(&(o, true)) = queue.front() {
            last = Some(o);
            queue.pop_front();
        }
        last
    }
}

/// A consumer that is dropped on a thread of its own. Dropping a consumer leaves its group, and
/// waits for the group's coordinator to answer: with the cluster unreachable that can take as long
/// as the session timeout, and must not hold an async worker (or a shutting-down runtime).
struct Detached(Option<StreamConsumer<SourceContext>>);

/// Reports a source's consumer lag from librdkafka's statistics.
struct SourceContext {
    route: String,
    topic: String,
    metrics: Arc<Metrics>,
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        // Partitions this consumer does not read report -1.
        let lag = topic
            .partitions
            .values()
            .map(|p| p.consumer_lag)
            .filter(|lag| *lag >= 0)
            .sum();
        self.metrics.source_lag(&self.route, lag);
    }
}

impl ConsumerContext for SourceContext {}

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(consumer) = self.0.take() {
            let _ = std::thread::Builder::new()
                .name("barnabas-consumer-close".into())
                .spawn(move || drop(consumer));
        }
    }
}

async fn read(
    detached: Detached,
    spec: SourceSpec,
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    mut stopped: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
) {
    let Some(consumer) = &detached.0 else {
        return;
    };
    let window = Arc::new(Semaphore::new(UNDER_WAY));
    let (settled_tx, mut settled_rx) = mpsc::unbounded_channel::<(i32, i64)>();
    let mut progress = Progress::default();
    let store = |progress: &mut Progress, (partition, offset): (i32, i64)| {
        if let Some(last) = progress.settled(partition, offset)
            // librdkafka stores `last + 1`, the next offset to read.
            && let Err(error) = consumer.store_offset(&spec.address, partition, last)
        {
            // The partition went to another member of the group: it reads on from the last commit.
            tracing::debug!(route = spec.route, partition, %error, "offset not stored");
        }
    };
    'reading: loop {
        let permit = tokio::select! {
            _ = crate::stopped(&mut stopped) => break 'reading,
            Some(done) = settled_rx.recv() => { store(&mut progress, done); continue; }
            permit = window.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break 'reading,
            },
        };
        let record = loop {
            tokio::select! {
                biased;
                _ = crate::stopped(&mut stopped) => break 'reading,
                Some(done) = settled_rx.recv() => store(&mut progress, done),
                record = consumer.recv() => break record,
            }
        };
        let record = match record {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(route = spec.route, %error, "kafka read failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let (partition, offset) = (record.partition(), record.offset());
        let snapshot = pipeline.snapshot();
        let Some(route) = snapshot.routes().named(&spec.route).cloned() else {
            // The route was removed by a reload: this reader is about to be stopped. The record
            // is not settled, so the group reads it again if the route comes back.
            continue;
        };
        let Some(source) = route.source.clone() else {
            continue;
        };
        let mut headers = Vec::new();
        if let Some(h) = record.headers() {
            for header in h.iter() {
                headers.push(Header::new(
                    header.key,
                    Bytes::copy_from_slice(header.value.unwrap_or_default()),
                ));
            }
        }
        // A record an MQTT client published through the proxy is offered at no more than the QoS
        // it was published with (its `mqtt.qos` header), as an MQTT broker would.
        let published_qos = headers
            .iter()
            .find(|h| h.name == "mqtt.qos")
            .and_then(|h| std::str::from_utf8(&h.value).ok()?.parse::<u8>().ok());
        let mut message = Message::new(
            Source {
                protocol: Protocol::Kafka,
                client_id: Arc::from(spec.group.as_str()),
                topic: record.topic().to_string(),
                qos: published_qos.map_or(source.qos, |q| q.min(source.qos)),
                identity: None,
            },
            headers,
            Bytes::copy_from_slice(record.payload().unwrap_or_default()),
        );
        message.key = record.key().map(Bytes::copy_from_slice);
        drop(record);
        progress.read(partition, offset);

        // Handed over here, in partition order; settled in a task of its own.
        let pending = snapshot.prepare_on(&route, message.clone()).await;
        let settled_tx = settled_tx.clone();
        let pipeline = pipeline.clone();
        let stop = stopped.clone();
        let shutdown = shutdown.clone();
        let ttl = source.ttl;
        let route_name = spec.route.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let (outcome, timed_out) = match tokio::time::timeout(ttl, pending.outcome()).await {
                Ok(outcome) => (outcome, false),
                Err(_) => (
                    Outcome::Failed(format!(
                        "not acknowledged within ttl_ms ({} ms)",
                        ttl.as_millis()
                    )),
                    true,
                ),
            };
            let settled = matches!(outcome, Outcome::Delivered | Outcome::Dropped(_));
            if !settled && *shutdown.borrow() {
                // Failed because the proxy is stopping (its clients are being disconnected): not
                // settled, so it is read again after the restart rather than reported.
                drop(permit);
                return;
            }
            if let Some((status, reason)) = undelivered(&outcome, timed_out) {
                metrics.undelivered(&route_name, status);
                tracing::debug!(
                    route = route_name,
                    partition,
                    offset,
                    status,
                    reason,
                    "undelivered"
                );
                if !report_undelivered(&pipeline, &route_name, &message, status, &reason, stop)
                    .await
                {
                    // Stopped before the report was taken: not settled, read again after restart.
                    drop(permit);
                    return;
                }
            }
            let _ = settled_tx.send((partition, offset));
            drop(permit);
        });
    }

    // Let the records under way settle (each is bounded by its ttl), then commit.
    let _ = tokio::time::timeout(
        spec.ttl + Duration::from_secs(1),
        window.acquire_many(UNDER_WAY as u32),
    )
    .await;
    while let Ok(done) = settled_rx.try_recv() {
        store(&mut progress, done);
    }
    if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(route = spec.route, %error, "final commit failed");
    }
    tracing::info!(route = spec.route, "stopped reading");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_stored_in_order() {
        let mut p = Progress::default();
        for o in 10..14 {
            p.read(0, o);
        }
        assert_eq!(p.settled(0, 11), None, "10 is still under way");
        assert_eq!(p.settled(0, 10), Some(11));
        assert_eq!(p.settled(0, 13), None);
        assert_eq!(p.settled(0, 12), Some(13));
        assert_eq!(p.settled(1, 5), None, "a partition never read");
    }
}
