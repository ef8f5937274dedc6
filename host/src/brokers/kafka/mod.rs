//! Kafka: [`producer`] delivers records with an idempotent `acks=all` producer; [`consumer`] reads
//! a topic for a source route and commits a record only once it is settled; [`embedded`] runs
//! librdkafka's mock cluster for `bootstrap: embedded`. The destination's config type lives here.

pub mod consumer;
mod embedded;
mod producer;

pub use consumer::KafkaSource;
pub use embedded::EmbeddedKafka;
pub use producer::KafkaDestination;

use std::collections::BTreeMap;

/// Where a Kafka destination finds its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// A Kafka (librdkafka's mock cluster) inside the proxy, for trying things out.
    Embedded,
    /// `host:port[,host:port...]`.
    Servers(String),
}

/// `kind: kafka`.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaConfig {
    /// The cluster.
    pub bootstrap: Bootstrap,
    /// librdkafka producer properties, passed through.
    pub options: BTreeMap<String, String>,
    /// `allow_weaker_delivery: true`: options may weaken `acks=all` and idempotence.
    pub allow_weaker_delivery: bool,
}
