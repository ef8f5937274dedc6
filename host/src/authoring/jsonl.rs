//! The JSON-lines message format shared by `barnabas plugin test` (its input and `--expect`),
//! `barnabas record` (what it writes) and `barnabas replay` (what it reads). One message per line:
//!
//! ```json
//! {"topic":"telemetry/acme/dev1","payload":"{\"temperature\":42}"}
//! {"topic":"telemetry/acme/dev2","qos":0,"key":"dev2","headers":[["tenant","acme"]],
//!  "payload":{"base64":"AAEC"},"source":{"protocol":"mqtt","client_id":"dev2","identity":"plant-7"}}
//! ```
//!
//! Only `topic` and `payload` are required. A value that is bytes (payload, key, header value) is
//! a JSON string when it is UTF-8 text and `{"base64": "..."}` otherwise. A recorded line may
//! also hold the `result` the route gave it; a result line (what `plugin test` prints and
//! `--expect` holds) is one of:
//!
//! ```json
//! {"verdict":"forward","outputs":[{"topic":"t","payload":"...","headers":[["site","plant-7"]]}]}
//! {"verdict":"drop","reason":"below the floor"}
//! {"verdict":"reject","reason":"not a JSON object"}
//! {"verdict":"error","error":"plugin \"x\" trapped: ..."}
//! {"verdict":"dead-letter","reason":"plugin \"x\" timed out ..."}
//! ```
//! An output names its route output (`"output":"alerts"`) when a plugin chose one.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::message::{Direction, Header, Message, Outcome, Protocol, Rejection, Source};
use crate::pipeline::{Item, Stop};
use crate::plugin::{CallError, Verdict};

/// Bytes as JSON: text when they are UTF-8, base64 otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Data {
    /// UTF-8 text.
    Text(String),
    /// Anything else.
    Binary {
        /// The bytes, in standard base64.
        base64: String,
    },
}

impl Data {
    /// `bytes` as text if they are UTF-8, else base64.
    pub fn of(bytes: &[u8]) -> Data {
        match std::str::from_utf8(bytes) {
            Ok(text) => Data::Text(text.to_string()),
            Err(_) => Data::Binary {
                base64: STANDARD.encode(bytes),
            },
        }
    }

    /// The bytes.
    pub fn bytes(&self) -> Result<Bytes, String> {
        match self {
            Data::Text(t) => Ok(Bytes::from(t.clone())),
            Data::Binary { base64 } => STANDARD
                .decode(base64)
                .map(Bytes::from)
                .map_err(|e| format!("invalid base64: {e}")),
        }
    }
}

/// Where a message line came from. Every field has a default, so a hand-written line needs none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceLine {
    /// `mqtt`, `amqp` or `kafka`.
    #[serde(default = "mqtt")]
    pub protocol: String,
    /// The client id (empty for a record read from a broker).
    #[serde(default = "test_client")]
    pub client_id: String,
    /// The identity the client logged in as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// `inbound` (from a client) or `outbound` (read from a broker by a source route); used by
    /// `plugin test` (replay takes the route's).
    #[serde(default = "inbound")]
    pub direction: String,
}

fn mqtt() -> String {
    "mqtt".into()
}
fn test_client() -> String {
    "test-client".into()
}
fn inbound() -> String {
    "inbound".into()
}
fn one() -> u8 {
    1
}

impl Default for SourceLine {
    fn default() -> Self {
        SourceLine {
            protocol: mqtt(),
            client_id: test_client(),
            identity: None,
            direction: inbound(),
        }
    }
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageLine {
    /// The topic (or AMQP address) it was published to.
    pub topic: String,
    /// Its QoS (default 1).
    #[serde(default = "one")]
    pub qos: u8,
    /// Its key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Data>,
    /// Its headers, in order, as `[name, value]` pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, Data)>,
    /// Its payload.
    pub payload: Data,
    /// Where it came from.
    #[serde(default)]
    pub source: SourceLine,
    /// The route it was recorded on (written by `record`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// What the route made of it (written by `record --outputs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultLine>,
}

impl MessageLine {
    /// Parses one line.
    pub fn parse(line: &str) -> Result<MessageLine, String> {
        let parsed: MessageLine = serde_json::from_str(line).map_err(|e| e.to_string())?;
        if parsed.qos > 2 {
            return Err(format!("qos {} is not 0, 1 or 2", parsed.qos));
        }
        Ok(parsed)
    }

    /// The line of a message as it arrived (its source topic), recorded on `route`.
    pub fn of(msg: &Message, route: &str) -> MessageLine {
        MessageLine {
            topic: msg.source.topic.clone(),
            qos: msg.source.qos,
            key: msg.key.as_deref().map(Data::of),
            headers: headers_of(&msg.headers),
            payload: Data::of(&msg.payload),
            source: SourceLine {
                protocol: msg.source.protocol.as_str().to_string(),
                client_id: msg.source.client_id.to_string(),
                identity: msg.source.identity.as_deref().map(str::to_string),
                direction: inbound(),
            },
            route: Some(route.to_string()),
            result: None,
        }
    }

    /// The message it describes, as the proxy would have it after its protocol read it.
    pub fn message(&self) -> Result<Message, String> {
        let protocol = match self.source.protocol.as_str() {
            "mqtt" => Protocol::Mqtt,
            "amqp" => Protocol::Amqp,
            "kafka" => Protocol::Kafka,
            other => return Err(format!("protocol {other:?} is not mqtt, amqp or kafka")),
        };
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            headers.push(Header::new(name.clone(), value.bytes()?));
        }
        let mut msg = Message::new(
            Source {
                protocol,
                client_id: Arc::from(self.source.client_id.as_str()),
                topic: self.topic.clone(),
                qos: self.qos,
                identity: self.source.identity.as_deref().map(Arc::from),
            },
            headers,
            self.payload.bytes()?,
        );
        msg.key = self.key.as_ref().map(Data::bytes).transpose()?;
        Ok(msg)
    }

    /// The direction `plugin test` runs it in.
    pub fn direction(&self) -> Result<Direction, String> {
        match self.source.direction.as_str() {
            "inbound" => Ok(Direction::Inbound),
            "outbound" => Ok(Direction::Outbound),
            other => Err(format!("direction {other:?} is not inbound or outbound")),
        }
    }
}

/// One output of a forward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputLine {
    /// The route output a plugin chose; absent for the route's `to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The topic.
    pub topic: String,
    /// The key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Data>,
    /// The headers, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, Data)>,
    /// The payload.
    pub payload: Data,
}

/// What a plugin (or a route's chain) made of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ResultLine {
    /// Sent on as these outputs.
    Forward {
        /// The outputs, in order.
        outputs: Vec<OutputLine>,
    },
    /// Filtered out.
    Drop {
        /// Why.
        reason: String,
    },
    /// Refused by a plugin.
    Reject {
        /// Why.
        reason: String,
    },
    /// A plugin failed (trap, timeout, error), and the route's `on_error` refuses the message.
    Error {
        /// What failed.
        error: String,
    },
    /// A plugin failed and the route's `on_error` dead-letters the message.
    DeadLetter {
        /// What failed.
        reason: String,
    },
}

impl ResultLine {
    /// What one plugin call returned.
    pub fn of_call(result: &Result<Verdict, CallError>) -> ResultLine {
        match result {
            Ok(Verdict::Forward(outputs)) => ResultLine::Forward {
                outputs: outputs
                    .iter()
                    .map(|o| OutputLine {
                        output: o.name.clone(),
                        topic: o.topic.clone(),
                        key: o.key.as_deref().map(Data::of),
                        headers: headers_of(&o.headers),
                        payload: Data::of(&o.payload),
                    })
                    .collect(),
            },
            Ok(Verdict::Drop(reason)) => ResultLine::Drop {
                reason: reason.clone(),
            },
            Ok(Verdict::Reject(reason)) => ResultLine::Reject {
                reason: reason.clone(),
            },
            Err(e) => ResultLine::Error {
                error: e.to_string(),
            },
        }
    }

    /// What a route's plugin chain made of a message.
    pub fn of_chain(result: &Result<Vec<Item>, Stop>) -> ResultLine {
        match result {
            Ok(items) => ResultLine::Forward {
                outputs: items
                    .iter()
                    .map(|i| OutputLine {
                        output: i.output.clone(),
                        topic: i.topic.clone(),
                        key: i.key.as_deref().map(Data::of),
                        headers: headers_of(&i.headers),
                        payload: Data::of(&i.payload),
                    })
                    .collect(),
            },
            Err(Stop::DeadLetter(_, reason)) => ResultLine::DeadLetter {
                reason: reason.clone(),
            },
            Err(Stop::Outcome(outcome)) => match outcome {
                Outcome::Dropped(reason) => ResultLine::Drop {
                    reason: reason.clone(),
                },
                Outcome::Rejected(Rejection::Plugin, reason) => ResultLine::Reject {
                    reason: reason.clone(),
                },
                Outcome::Rejected(_, reason) | Outcome::Failed(reason) => ResultLine::Error {
                    error: reason.clone(),
                },
                Outcome::Delivered => ResultLine::Forward {
                    outputs: Vec::new(),
                },
            },
        }
    }

    /// The verdict's name: `forward`, `drop`, `reject`, `error` or `dead-letter`.
    pub fn verdict(&self) -> &'static str {
        match self {
            ResultLine::Forward { .. } => "forward",
            ResultLine::Drop { .. } => "drop",
            ResultLine::Reject { .. } => "reject",
            ResultLine::Error { .. } => "error",
            ResultLine::DeadLetter { .. } => "dead-letter",
        }
    }

    /// One JSON line.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn headers_of(headers: &[Header]) -> Vec<(String, Data)> {
    headers
        .iter()
        .map(|h| (h.name.clone(), Data::of(&h.value)))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_minimal_line_takes_defaults_and_binary_round_trips() {
        let line = MessageLine::parse(r#"{"topic":"a/b","payload":"hi"}"#).unwrap();
        assert_eq!(line.qos, 1);
        assert_eq!(line.source, SourceLine::default());
        let msg = line.message().unwrap();
        assert_eq!(&msg.payload[..], b"hi");

        let binary = Data::of(&[0xff, 0, 1]);
        assert_eq!(
            binary,
            Data::Binary {
                base64: "/wAB".into()
            }
        );
        assert_eq!(&binary.bytes().unwrap()[..], &[0xff, 0, 1]);
        let json = serde_json::to_string(&binary).unwrap();
        assert_eq!(serde_json::from_str::<Data>(&json).unwrap(), binary);
    }

    #[test]
    fn bad_lines_say_why() {
        assert!(
            MessageLine::parse(r#"{"payload":"x"}"#)
                .unwrap_err()
                .contains("topic")
        );
        assert!(MessageLine::parse(r#"{"topic":"t","payload":"x","qos":3}"#).is_err());
        assert!(MessageLine::parse(r#"{"topic":"t","payload":"x","paylod":1}"#).is_err());
    }

    #[test]
    fn results_serialise_with_their_verdict() {
        let r = ResultLine::Drop { reason: "r".into() };
        assert_eq!(r.to_line(), r#"{"verdict":"drop","reason":"r"}"#);
        let parsed: ResultLine = serde_json::from_str(&r.to_line()).unwrap();
        assert_eq!(parsed, r);
    }
}
