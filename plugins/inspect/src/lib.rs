//! A test fixture: reports what the contract lets a plugin see, as headers, and makes the edits
//! the contract allows, so tests can check both ends of every `current` import and output edit.
//!
//! Each forwarded message gets `seen-protocol`, `seen-direction`, `seen-client-id`,
//! `seen-identity` (`-` when anonymous), `seen-route`, `seen-headers` (how many headers it came
//! with) and `seen-tenant` (the value of its `tenant` header, `-` without one). The header
//! `remove-me` is removed, and with `config: { clear_key: true }` the key is cleared.
use barnabas_plugin_sdk::{Direction, Message, Output, Plugin, Protocol, Verdict, export_plugin};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    clear_key: bool,
}

struct Inspect(Config);

impl Plugin for Inspect {
    type Config = Option<Config>;

    fn new(config: Option<Config>) -> Result<Self, String> {
        Ok(Inspect(config.unwrap_or_default()))
    }

    fn handle(&self, msg: Message) -> Result<Verdict, String> {
        let source = msg.source();
        let mut out = Output::keep();
        let protocol = match source.protocol {
            Protocol::Mqtt => "mqtt",
            Protocol::Amqp => "amqp",
            Protocol::Kafka => "kafka",
        };
        let direction = match source.direction {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        };
        out.set_header("seen-protocol", protocol);
        out.set_header("seen-direction", direction);
        out.set_header("seen-client-id", source.client_id);
        out.set_header(
            "seen-identity",
            source.identity.unwrap_or_else(|| "-".into()),
        );
        out.set_header("seen-route", source.route);
        out.set_header("seen-headers", msg.headers().len().to_string());
        out.set_header(
            "seen-tenant",
            msg.header("tenant").unwrap_or_else(|| b"-".to_vec()),
        );
        out.remove_header("remove-me");
        if self.0.clear_key {
            out.clear_key();
        }
        Ok(Verdict::Forward(vec![out]))
    }
}

export_plugin!(Inspect);
