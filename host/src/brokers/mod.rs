//! The brokers the proxy delivers to, one module per kind ([`kafka`], [`amqp`]), each holding its
//! config type and its client.
//!
//! A destination is a broker messages are delivered to.
//! `Destination::enqueue` hands a record to the broker's client in call order and returns an
//! [`Ack`] that resolves only when the broker has acknowledged the record (for Kafka, the
//! `acks=all` delivery report): that future is what holds back the client's acknowledgement.

pub mod amqp;
pub mod kafka;

pub use amqp::AmqpDestination;
pub use kafka::{EmbeddedKafka, KafkaDestination};

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::message::{Headers, Source};

/// Why a delivery failed; says whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The broker is unavailable or did not answer in time: the client should resend.
    #[error("{0}")]
    Retriable(String),
    /// The broker refused this record for good (too large, invalid topic, not authorised).
    #[error("{0}")]
    Permanent(String),
    /// Nobody was there to take it: no client of the proxy subscribed to its topic.
    #[error("{0}")]
    NoReceiver(String),
}

/// One record for one destination.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The address at the destination (a Kafka topic).
    pub address: String,
    /// The Kafka key.
    pub key: Option<Bytes>,
    /// Headers, in order.
    pub headers: Headers,
    /// The payload.
    pub payload: Bytes,
    /// Where the message came from.
    pub source: Arc<Source>,
}

/// The wait for the broker's acknowledgement of one record already handed to its client.
pub type Ack = BoxFuture<'static, Result<(), BrokerError>>;

/// One acknowledgement for a record given to several clients of the proxy: success once every
/// one acknowledged; otherwise a refusal if any refused (it says more than a failure that may
/// pass), else the first failure.
pub fn all_acknowledged(waits: Vec<Ack>) -> Ack {
    use futures::FutureExt;
    async move {
        let mut retriable = None;
        for r in futures::future::join_all(waits).await {
            match r {
                Ok(()) => {}
                Err(e @ BrokerError::Permanent(_)) => return Err(e),
                Err(e) => retriable = retriable.or(Some(e)),
            }
        }
        retriable.map_or(Ok(()), Err)
    }
    .boxed()
}

/// A broker messages are delivered to.
pub trait Destination: Send + Sync {
    /// Hands one record to the broker's client and returns the wait for its acknowledgement.
    ///
    /// The returned future resolves once the record is queued in the client, in call order: a
    /// caller that awaits one `enqueue` before starting the next gets its records to the broker in
    /// that order (per Kafka partition, per AMQP address), while their acknowledgements are
    /// awaited together. It waits only for room in the client's queue, and not without bound.
    fn enqueue(&self, delivery: Delivery) -> BoxFuture<'_, Result<Ack, BrokerError>>;

    /// Checks that the broker answers, for readiness and status: resolves within a few seconds
    /// whether or not it does.
    fn probe(&self) -> BoxFuture<'static, Result<(), BrokerError>>;
}
