//! An AMQP 1.0 message into headers and payload, as the pipeline carries them.
//!
//! - properties: `message-id`, `correlation-data` (correlation-id), `subject`, `content-type`,
//!   `response-topic` (reply-to) and `to`, under the names MQTT 5 properties use where one exists;
//! - application-properties and message-annotations: one header each, under its own name;
//! - the body: `data` sections concatenated; an `amqp-value` string or binary as its bytes; any
//!   other value, and every `amqp-sequence`, in its AMQP encoding. `amqp.body` records which.
//!
//! Values that are not text or bytes become text (numbers, booleans, UUIDs) or, failing that,
//! their AMQP encoding.

use bytes::Bytes;
use fe2o3_amqp_types::messaging::{Body, Message, MessageId};
use fe2o3_amqp_types::primitives::Value;

use crate::message::{Header, is_reserved_header, well_known};

/// Headers, the Kafka key an annotation chose (if any) and the payload of `msg`.
pub(crate) fn from_amqp(msg: Message<Body<Value>>) -> (Vec<Header>, Option<Bytes>, Bytes) {
    let mut headers = Vec::new();
    let mut key = None;
    if let Some(p) = msg.properties {
        if let Some(id) = p.message_id {
            headers.push(Header::new(well_known::MESSAGE_ID, message_id(id)));
        }
        if let Some(id) = p.correlation_id {
            headers.push(Header::new(well_known::CORRELATION_DATA, message_id(id)));
        }
        if let Some(s) = p.subject {
            headers.push(Header::new(well_known::SUBJECT, s));
        }
        if let Some(ct) = p.content_type {
            headers.push(Header::new(well_known::CONTENT_TYPE, ct.0));
        }
        if let Some(r) = p.reply_to {
            headers.push(Header::new(well_known::RESPONSE_TOPIC, r));
        }
        if let Some(to) = p.to {
            headers.push(Header::new(well_known::TO, to));
        }
    }
    if let Some(ma) = msg.message_annotations {
        for (k, v) in ma.0 {
            let name = match k {
                fe2o3_amqp_types::messaging::annotations::OwnedKey::Symbol(s) => s.0,
                fe2o3_amqp_types::messaging::annotations::OwnedKey::Ulong(n) => n.to_string(),
            };
            let value = value_bytes(v);
            if name == well_known::KAFKA_KEY_ANNOTATION {
                key = Some(value.clone());
            }
            // The proxy's own headers come from the proxy only.
            if !is_reserved_header(&name) {
                headers.push(Header::new(name, value));
            }
        }
    }
    if let Some(ap) = msg.application_properties {
        for (k, v) in ap.0 {
            if !is_reserved_header(&k) {
                headers.push(Header::new(k, value_bytes(Value::from(v))));
            }
        }
    }
    let (kind, payload) = match msg.body {
        Body::Data(sections) => {
            let mut all = Vec::new();
            for d in sections {
                all.extend_from_slice(&d.0);
            }
            ("data", Bytes::from(all))
        }
        Body::Value(v) => ("amqp-value", value_bytes(v.0)),
        Body::Sequence(seqs) => {
            let items: Vec<Value> = seqs.into_iter().flat_map(|s| s.0).collect();
            ("amqp-sequence", encoded(&Value::List(items)))
        }
        Body::Empty => ("data", Bytes::new()),
    };
    headers.push(Header::new(well_known::AMQP_BODY, kind));
    (headers, key, payload)
}

fn message_id(id: MessageId) -> Bytes {
    match id {
        MessageId::String(s) => Bytes::from(s),
        MessageId::Ulong(n) => Bytes::from(n.to_string()),
        MessageId::Uuid(u) => Bytes::from(format!("{u:?}")),
        MessageId::Binary(b) => Bytes::from(b.into_vec()),
    }
}

fn encoded(v: &Value) -> Bytes {
    serde_amqp::to_vec(v).map(Bytes::from).unwrap_or_default()
}

/// A value as header or payload bytes: strings and binaries as they are (moved, not copied),
/// numbers and booleans as text, anything else in its AMQP encoding.
fn value_bytes(v: Value) -> Bytes {
    match v {
        Value::String(s) => Bytes::from(s),
        Value::Symbol(s) => Bytes::from(s.0),
        Value::Binary(b) => Bytes::from(b.into_vec()),
        Value::Bool(b) => Bytes::from(b.to_string()),
        Value::Ubyte(n) => Bytes::from(n.to_string()),
        Value::Ushort(n) => Bytes::from(n.to_string()),
        Value::Uint(n) => Bytes::from(n.to_string()),
        Value::Ulong(n) => Bytes::from(n.to_string()),
        Value::Byte(n) => Bytes::from(n.to_string()),
        Value::Short(n) => Bytes::from(n.to_string()),
        Value::Int(n) => Bytes::from(n.to_string()),
        Value::Long(n) => Bytes::from(n.to_string()),
        Value::Float(n) => Bytes::from(n.to_string()),
        Value::Double(n) => Bytes::from(n.to_string()),
        Value::Char(c) => Bytes::from(c.to_string()),
        other => encoded(&other),
    }
}
