//! An AMQP 1.0 broker queue as a source: the reader behind a route with
//! `from: "AMQP-DESTINATION:ADDRESS"` (for RabbitMQ, `rabbit:/queue/orders-out`).
//!
//! One receiving link per source route, named `barnabas.INSTANCE.ROUTE`, reads the address with
//! a durable source terminus. Each message becomes a [`Message`] (properties, application
//! properties and annotations as headers, as on the proxy's own AMQP listener) and runs through
//! the route on the serving snapshot, in the order the broker sent them. It is settled with the
//! broker only once it is settled downstream: `accepted` when every subscriber it matched
//! acknowledged it or it was reported undelivered; `released` (the broker gives it out again)
//! when the proxy stops first. A message left unsettled when the link or connection goes away is
//! given out again by the broker as well. At most [`UNDER_WAY`] messages per route are between
//! read and settled.

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::Receiver;
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp_types::messaging::{Body, TerminusDurability};
use fe2o3_amqp_types::primitives::Value;
use tokio::sync::{mpsc, watch};

use crate::message::{Message, Outcome, Protocol, Source};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::protocols::amqp::convert::from_amqp;
use crate::sources::{SourceFrom, SourceSpec, report_undelivered, undelivered};

/// Messages of one source route between read and settled; also the link credit.
pub const UNDER_WAY: u32 = 100;

/// A running reader; [`AmqpSource::stop`] stops it.
pub struct AmqpSource {
    spec: SourceSpec,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl AmqpSource {
    /// Starts reading for `spec.route`; it connects (and reconnects, backing off to 5 s) on its
    /// own. `shutdown` is the proxy's: once it turns, a message that failed is released, not
    /// reported.
    pub fn start(
        spec: SourceSpec,
        pipeline: Arc<Pipeline>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> AmqpSource {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(read(spec.clone(), pipeline, metrics, stopped, shutdown));
        AmqpSource { spec, stop, task }
    }

    /// What it reads.
    pub fn spec(&self) -> &SourceSpec {
        &self.spec
    }

    /// Stops reading, lets the messages under way settle (at most their `ttl_ms`) and closes the
    /// link.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn read(
    spec: SourceSpec,
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    mut stopped: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
) {
    let SourceFrom::Amqp(config) = &spec.from else {
        return;
    };
    let mut backoff = Duration::from_millis(200);
    while !*stopped.borrow() {
        match serve(&spec, config, &pipeline, &metrics, &mut stopped, &shutdown).await {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(route = spec.route, url = %config.redacted_url(), %error, retry_in = ?backoff, "amqp source not reading");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = crate::stopped(&mut stopped) => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    tracing::info!(route = spec.route, "stopped reading");
}

/// One connection's worth of reading; `Ok` when told to stop, `Err` when the broker went away.
async fn serve(
    spec: &SourceSpec,
    config: &crate::brokers::amqp::AmqpConfig,
    pipeline: &Arc<Pipeline>,
    metrics: &Arc<Metrics>,
    stopped: &mut watch::Receiver<bool>,
    shutdown: &watch::Receiver<bool>,
) -> Result<(), String> {
    let (mut connection, mut session) =
        super::connect(&spec.group, &config.url, &config.tls).await?;
    // Durable, like the queues the AMQP destination declares on RabbitMQ.
    let source = fe2o3_amqp_types::messaging::Source::builder()
        .address(spec.address.clone())
        .durable(TerminusDurability::Configuration)
        .build();
    let mut receiver = Receiver::builder()
        .name(spec.group.clone())
        .source(source)
        .credit_mode(CreditMode::Auto(UNDER_WAY))
        .attach(&mut session)
        .await
        .map_err(|e| format!("attach to {}: {e}", spec.address))?;
    tracing::info!(route = spec.route, address = spec.address, "reading");
    let (settled_tx, mut settled_rx) = mpsc::unbounded_channel::<(DeliveryInfo, bool)>();
    let mut under_way = 0u32;
    let result = loop {
        tokio::select! {
            biased;
            _ = crate::stopped(stopped) => break Ok(()),
            Some((info, accept)) = settled_rx.recv() => {
                under_way -= 1;
                let settled = if accept { receiver.accept(info).await } else { receiver.release(info).await };
                if let Err(error) = settled {
                    break Err(format!("settle: {error}"));
                }
            }
            delivery = receiver.recv::<Body<Value>>(), if under_way < UNDER_WAY => {
                let delivery = match delivery {
                    Ok(d) => d,
                    Err(error) => break Err(format!("receive: {error}")),
                };
                let (info, msg) = delivery.into_parts();
                let snapshot = pipeline.snapshot();
                let Some(route) = snapshot.routes().named(&spec.route).cloned() else {
                    // Removed by a reload: this reader is about to be stopped.
                    let _ = receiver.release(info).await;
                    continue;
                };
                let Some(route_source) = route.source.clone() else {
                    let _ = receiver.release(info).await;
                    continue;
                };
                let (headers, key, payload) = from_amqp(msg);
                let mut message = Message::new(
                    Source {
                        protocol: Protocol::Amqp,
                        client_id: Arc::from(spec.group.as_str()),
                        topic: spec.address.clone(),
                        qos: route_source.qos,
                        identity: None,
                    },
                    headers,
                    payload,
                );
                message.key = key;
                let pending = snapshot.prepare_on(&route, message.clone()).await;
                under_way += 1;
                let settled_tx = settled_tx.clone();
                let pipeline = pipeline.clone();
                let metrics = metrics.clone();
                let shutdown = shutdown.clone();
                let route_name = spec.route.clone();
                let ttl = route_source.ttl;
                tokio::spawn(async move {
                    let (outcome, timed_out) = match tokio::time::timeout(ttl, pending.outcome()).await {
                        Ok(outcome) => (outcome, false),
                        Err(_) => (
                            Outcome::Failed(format!("not acknowledged within ttl_ms ({} ms)", ttl.as_millis())),
                            true,
                        ),
                    };
                    let delivered = matches!(outcome, Outcome::Delivered | Outcome::Dropped(_));
                    if !delivered && *shutdown.borrow() {
                        let _ = settled_tx.send((info, false));
                        return;
                    }
                    if let Some((status, reason)) = undelivered(&outcome, timed_out) {
                        metrics.undelivered(&route_name, status);
                        if !report_undelivered(&pipeline, &route_name, &message, status, &reason, shutdown).await {
                            let _ = settled_tx.send((info, false));
                            return;
                        }
                    }
                    let _ = settled_tx.send((info, true));
                });
            }
        }
    };
    // Let what is under way settle (each is bounded by its ttl) before the link closes; what is
    // still unsettled then is given out again by the broker.
    let deadline = tokio::time::Instant::now() + spec.ttl + Duration::from_secs(1);
    while under_way > 0 && result.is_ok() {
        tokio::select! {
            Some((info, accept)) = settled_rx.recv() => {
                under_way -= 1;
                let _ = if accept { receiver.accept(info).await } else { receiver.release(info).await };
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    super::close_step(receiver.close()).await;
    super::close_step(session.end()).await;
    super::close_step(connection.close()).await;
    result
}
