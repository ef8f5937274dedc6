//! The serde image of routes.yaml, exactly as written: every value keeps its line and column so
//! that `compile` can point at it. Nothing here is validated beyond its YAML type.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Visitor};
use serde_saphyr::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub version: Option<Spanned<u32>>,
    #[serde(default)]
    pub listeners: RawListeners,
    #[serde(default)]
    pub destinations: BTreeMap<String, Spanned<RawDestination>>,
    #[serde(default)]
    pub plugins: BTreeMap<String, Spanned<RawPlugin>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    pub unmatched: Option<Spanned<String>>,
    pub admin: Option<Spanned<RawAdmin>>,
    pub limits: Option<Spanned<RawLimits>>,
    pub auth: Option<Spanned<RawAuth>>,
    pub instance: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub anonymous: Option<Spanned<bool>>,
    #[serde(default)]
    pub users: BTreeMap<String, Spanned<String>>,
    pub client_certs: Option<Spanned<RawClientCerts>>,
    #[serde(default)]
    pub acl: Vec<Spanned<RawAclRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientCerts {
    pub identity: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAclRule {
    pub identity: Spanned<String>,
    #[serde(default)]
    pub publish: Vec<Spanned<String>>,
    #[serde(default)]
    pub subscribe: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<Spanned<u32>>,
    pub max_inflight_bytes: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub bind: Option<Spanned<String>>,
}

/// `listeners:` by name. `mqtt` and `amqp` speak their own protocol; any other name says which
/// with `protocol:`. Every key of every protocol is here; `compile` checks which apply.
pub type RawListeners = BTreeMap<String, Spanned<RawListener>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub protocol: Option<Spanned<String>>,
    pub bind: Spanned<String>,
    pub tls: Option<Spanned<RawTls>>,
    /// `mqtt-ws`: the HTTP path of the WebSocket upgrade.
    pub path: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<u32>>,
    // MQTT
    pub max_packet_size: Option<Spanned<u32>>,
    pub receive_maximum: Option<Spanned<u16>>,
    pub topic_alias_maximum: Option<Spanned<u16>>,
    pub connect_timeout_ms: Option<Spanned<u64>>,
    pub server_keep_alive: Option<Spanned<u16>>,
    // AMQP
    pub anonymous: Option<Spanned<bool>>,
    #[serde(default)]
    pub users: BTreeMap<String, Spanned<String>>,
    pub max_message_size: Option<Spanned<u64>>,
    pub credit: Option<Spanned<u32>>,
    pub channel_max: Option<Spanned<u16>>,
    pub handle_max: Option<Spanned<u32>>,
    pub idle_timeout_ms: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub client_ca: Option<Spanned<String>>,
    pub client_auth: Option<Spanned<String>>,
}

/// One destination. The fields of every kind are here; `compile` checks which apply to `kind`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDestination {
    pub kind: Spanned<String>,
    pub bootstrap: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    #[serde(default)]
    pub options: BTreeMap<String, Spanned<Scalar>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub allow_weaker_delivery: Option<Spanned<bool>>,
    pub tls: Option<Spanned<RawClientTls>>,
}

/// `tls:` of an AMQP destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientTls {
    pub ca: Option<Spanned<String>>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    pub wasm: Spanned<String>,
    pub config: Option<Spanned<serde_json::Value>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub memory_mb: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Spanned<String>,
    pub from: Spanned<String>,
    #[serde(default)]
    pub plugins: Vec<Spanned<String>>,
    pub to: Spanned<String>,
    #[serde(default)]
    pub outputs: BTreeMap<String, Spanned<String>>,
    pub on_error: Option<Spanned<String>>,
    pub qos: Option<Spanned<u8>>,
    pub ttl_ms: Option<Spanned<u64>>,
    pub undelivered: Option<Spanned<String>>,
    /// `{ PLUGIN: OTHER_PLUGIN, ... }`.
    pub shadow: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    /// `{ PLUGIN: OTHER_PLUGIN, ..., percent: N }`.
    pub canary: Option<Spanned<BTreeMap<String, Spanned<Scalar>>>>,
}

/// A YAML scalar of any type, kept as text: librdkafka takes every option as a string.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}
