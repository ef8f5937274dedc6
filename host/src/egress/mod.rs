//! Destinations: the brokers messages are delivered to, one implementation per broker kind.
//!
//! `Destination::send` resolves only when the broker has acknowledged the record (for Kafka, the
//! `acks=all` delivery report): that future is what holds back the client's acknowledgement.

mod amqp;
mod kafka;

pub use amqp::AmqpDestination;
pub use kafka::{EmbeddedKafka, KafkaDestination};

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::message::{Header, Source};

/// Why a delivery failed; says whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// The broker is unavailable or did not answer in time: the client should resend.
    #[error("{0}")]
    Retriable(String),
    /// The broker refused this record for good (too large, invalid topic, not authorised).
    #[error("{0}")]
    Permanent(String),
}

/// One record for one destination.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The address at the destination (a Kafka topic).
    pub address: String,
    /// The Kafka key.
    pub key: Option<Bytes>,
    /// Headers, in order.
    pub headers: Vec<Header>,
    /// The payload.
    pub payload: Bytes,
    /// Where the message came from.
    pub source: Arc<Source>,
}

/// A broker messages are delivered to.
pub trait Destination: Send + Sync {
    /// Delivers one record; resolves when the broker acknowledged it or refused it.
    fn send(&self, delivery: Delivery) -> BoxFuture<'static, Result<(), EgressError>>;

    /// Checks that the broker answers, for readiness and status: resolves within a few seconds
    /// whether or not it does.
    fn probe(&self) -> BoxFuture<'static, Result<(), EgressError>>;
}
