//! The protocol-neutral message that flows from an ingress through the plugins to the egress, and
//! the [`Outcome`] that flows back to the ingress to become the client's acknowledgement.
//!
//! A `Message` carries no acknowledgement machinery: the ingress keeps the packet id or delivery tag
//! and waits for the `Outcome` of `Pipeline::dispatch`, so every protocol maps outcomes to its own
//! acks in one place.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;

/// The protocol a message arrived on: a client's, or Kafka for a record a source route read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1.1 or 5.
    Mqtt,
    /// AMQP 1.0 (a client of the proxy's listener, or a broker queue read by a source route).
    Amqp,
    /// A record read from Kafka by a source route.
    Kafka,
}

impl Protocol {
    /// The name used in routes.yaml (`from: "mqtt:..."`) and in origin headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Mqtt => "mqtt",
            Protocol::Amqp => "amqp",
            Protocol::Kafka => "kafka",
        }
    }

    /// The protocols clients speak to the proxy (what `from: "PROTOCOL:FILTER"` may name).
    pub const ALL: [Protocol; 2] = [Protocol::Mqtt, Protocol::Amqp];
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which way a message travels through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a client of the proxy towards a broker.
    Inbound,
    /// From a broker towards the proxy's clients.
    Outbound,
}

/// Where a message came from. Shared by every output the plugins make of it.
#[derive(Debug, Clone)]
pub struct Source {
    /// The protocol of the connection.
    pub protocol: Protocol,
    /// The client identifier of the connection.
    pub client_id: Arc<str>,
    /// The topic (or address) the client published to, before any plugin rewrote it.
    pub topic: String,
    /// The quality of service the client asked for: 0, 1 or 2 for MQTT; for AMQP 0 when the
    /// transfer was pre-settled (at most once), 1 when it waits for its outcome.
    pub qos: u8,
    /// The identity the client logged in as (`auth.users`); `None` for an anonymous client.
    pub identity: Option<Arc<str>>,
}

/// One header: a name and a byte value (Kafka headers are bytes; MQTT correlation data is binary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The header's name.
    pub name: String,
    /// The header's value.
    pub value: Bytes,
}

impl Header {
    /// A header from anything that converts into a name and bytes.
    pub fn new(name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// Well-known header names for protocol properties, so that every ingress and egress maps them the
/// same way (MQTT 5 properties and AMQP 1.0 message properties share the first three).
pub mod well_known {
    /// MQTT 5 content type.
    pub const CONTENT_TYPE: &str = "content-type";
    /// MQTT 5 correlation data.
    pub const CORRELATION_DATA: &str = "correlation-data";
    /// MQTT 5 response topic.
    pub const RESPONSE_TOPIC: &str = "response-topic";
    /// MQTT 5 message expiry interval, in seconds, as decimal text.
    pub const MESSAGE_EXPIRY_INTERVAL: &str = "message-expiry-interval";
    /// MQTT 5 payload format indicator: `0` bytes, `1` UTF-8 text.
    pub const PAYLOAD_FORMAT_INDICATOR: &str = "payload-format-indicator";
    /// AMQP message-id, as text.
    pub const MESSAGE_ID: &str = "message-id";
    /// AMQP subject.
    pub const SUBJECT: &str = "subject";
    /// AMQP `to` address.
    pub const TO: &str = "to";
    /// The kind of AMQP body the payload came from: `data`, `amqp-value` or `amqp-sequence`.
    /// An `amqp-value` holding a string or binary is its bare bytes; any other value, and every
    /// `amqp-sequence`, is its AMQP encoding.
    pub const AMQP_BODY: &str = "amqp.body";
    /// The identity the client logged in as; absent for anonymous clients. Set by the proxy only.
    pub const IDENTITY: &str = "barnabas.identity";
    /// The message annotation an AMQP sender sets to choose the Kafka key.
    pub const KAFKA_KEY_ANNOTATION: &str = "x-opt-kafka-key";
    /// The message annotation an AMQP sender sets to choose the Kafka partition.
    pub const KAFKA_PARTITION_ANNOTATION: &str = "x-opt-kafka-partition";
}

/// A message's headers, in order. Shared, not copied, between the stages a message passes: the
/// plugin chain, the `current` imports a plugin calls, and the producer. A plugin that leaves the
/// headers alone hands back the very same allocation.
pub type Headers = Arc<[Header]>;

/// A message on its way through the proxy.
#[derive(Debug, Clone)]
pub struct Message {
    /// Unique within this process, for logs.
    pub id: u64,
    /// Where it came from.
    pub source: Arc<Source>,
    /// The topic as the plugins see and may rewrite it; routes match the source topic.
    pub topic: String,
    /// Headers in arrival order.
    pub headers: Headers,
    /// The Kafka key, once a plugin chose one.
    pub key: Option<Bytes>,
    /// The payload.
    pub payload: Bytes,
    /// When the ingress read it.
    pub received_at: Instant,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Message {
    /// A new message from `source`, with the source's topic.
    pub fn new(source: Source, headers: Vec<Header>, payload: Bytes) -> Self {
        Message {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            topic: source.topic.clone(),
            source: Arc::new(source),
            headers: headers.into(),
            key: None,
            payload,
            received_at: Instant::now(),
        }
    }

    /// The bytes it holds: payload, topic, key and headers. What counts against the in-flight
    /// budget (`limits.max_inflight_bytes`).
    pub fn size(&self) -> usize {
        self.payload.len()
            + self.topic.len()
            + self.key.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|h| h.name.len() + h.value.len())
                .sum::<usize>()
    }
}

/// Why a message was refused for good: resending it cannot help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No route matched and `unmatched` is `reject`.
    Unmatched,
    /// A plugin returned a reject verdict.
    Plugin,
    /// A plugin trapped, timed out or returned an error, and the route's `on_error` is `reject`.
    PluginFailed,
    /// A destination refused it for good (too large, not authorised), or its address could not be
    /// filled from its topic.
    Undeliverable,
    /// The ACL does not let the client's identity publish to its topic.
    NotAuthorized,
    /// It was for the proxy's own clients (`to: "mqtt:..."`) and none subscribed to its topic.
    NoSubscriber,
}

/// What became of a message; the ingress turns it into the client's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every destination the pipeline chose for it acknowledged it.
    Delivered,
    /// Filtered out on purpose (a plugin's drop, or `unmatched: drop`).
    Dropped(String),
    /// Refused for good.
    Rejected(Rejection, String),
    /// Not delivered for now (a destination is unavailable or timed out): the client should resend.
    Failed(String),
}

impl Outcome {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Dropped(_) => "dropped",
            Outcome::Rejected(..) => "rejected",
            Outcome::Failed(_) => "failed",
        }
    }
}

impl Source {
    /// Headers that tell a consumer where a message came from: `mqtt.topic`, `mqtt.qos` and
    /// `mqtt.client-id` for MQTT; `amqp.address`, `amqp.qos` and `amqp.client-id` (the
    /// authenticated user, or the container id of an anonymous one) for AMQP; and
    /// `barnabas.identity` when the client logged in. Every egress adds them after the message's
    /// own headers, from which the ingress removed any a client sent under these names
    /// ([`is_reserved_header`]), so a consumer can trust them.
    ///
    /// Borrowed names and values: every record a producer writes carries them, and building them
    /// as owned headers cost six allocations a message.
    pub fn origin_headers(&self) -> impl Iterator<Item = (&'static str, &[u8])> + '_ {
        let (topic, qos, client_id) = match self.protocol {
            Protocol::Mqtt => ("mqtt.topic", "mqtt.qos", "mqtt.client-id"),
            Protocol::Amqp => ("amqp.address", "amqp.qos", "amqp.client-id"),
            Protocol::Kafka => ("kafka.topic", "kafka.qos", "kafka.client-id"),
        };
        let qos_text: &'static [u8] = match self.qos {
            0 => b"0",
            1 => b"1",
            2 => b"2",
            // `qos` is 0, 1 or 2 by construction (see the field).
            _ => b"invalid",
        };
        [
            (topic, self.topic.as_bytes()),
            (qos, qos_text),
            (client_id, self.client_id.as_bytes()),
        ]
        .into_iter()
        .chain(
            self.identity
                .as_deref()
                .map(|identity| (well_known::IDENTITY, identity.as_bytes())),
        )
    }
}

/// Whether a header name is one the proxy sets itself (`mqtt.*`, `amqp.*`, `barnabas.*`): such a
/// header sent by a client is dropped on the way in.
pub fn is_reserved_header(name: &str) -> bool {
    ["mqtt.", "amqp.", "barnabas."].iter().any(|prefix| {
        name.as_bytes()
            .get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
    })
}
