//! Eclipse Hono's command & control topics for MQTT 3.1.1 devices, which have no properties to
//! carry a request id or a status: they travel in the topic.
//!
//! - **Down** (a command read from Kafka, direction outbound): the record must carry
//!   `correlation-data` (the request id) and `subject` (the command's name), and a key (the
//!   device). The route's `to: "mqtt:command//{key}/req/{header:correlation-data}/{header:subject}"`
//!   then publishes it to Hono's topic for that device. A command without them is rejected, so it
//!   is reported undelivered with status `rejected` instead of reaching nobody.
//! - **Up** (a device's response, direction inbound) on `command//DEVICE/res/REQ-ID/STATUS` (or
//!   `command///res/REQ-ID/STATUS` from a device that logged in, whose identity is the device):
//!   the plugin sets the key to the device and the headers `correlation-data` (REQ-ID) and
//!   `status` (STATUS), so the application matches the response to its request.
//!
//! No configuration.
use barnabas_plugin_sdk::{Direction, Message, NoConfig, Output, Plugin, Verdict, export_plugin};

struct HonoCommand;

impl Plugin for HonoCommand {
    type Config = NoConfig;

    fn new(_: NoConfig) -> Result<Self, String> {
        Ok(HonoCommand)
    }

    fn handle(&self, msg: Message) -> Result<Verdict, String> {
        match msg.source().direction {
            Direction::Outbound => command(msg),
            Direction::Inbound => response(msg),
        }
    }
}

/// A command on its way to a device: it must name its request id, its name and its device.
fn command(msg: Message) -> Result<Verdict, String> {
    for header in ["correlation-data", "subject"] {
        let value = msg.header_str(header).unwrap_or_default();
        if value.is_empty() || value.contains(['/', '+', '#']) {
            return Ok(Verdict::Reject(format!(
                "a command needs a `{header}` header without `/`, `+` or `#`"
            )));
        }
    }
    if msg.key.as_ref().is_none_or(|k| k.is_empty()) {
        return Ok(Verdict::Reject("a command needs the device id as its key".into()));
    }
    Ok(msg.forward())
}

/// A device's response: `command/TENANT/DEVICE/res/REQ-ID/STATUS`.
fn response(msg: Message) -> Result<Verdict, String> {
    let levels: Vec<&str> = msg.topic_levels().collect();
    let [_, _, device, "res", request, status] = levels.as_slice() else {
        return Ok(Verdict::Reject(format!(
            "{:?} is not command/TENANT/DEVICE/res/REQ-ID/STATUS",
            msg.topic
        )));
    };
    let device = match (*device, msg.identity()) {
        ("", Some(identity)) => identity,
        ("", None) => {
            return Ok(Verdict::Reject(
                "an anonymous device must name itself in the topic".into(),
            ));
        }
        (device, _) => device.to_string(),
    };
    let out = Output::keep()
        .with_key(device)
        .with_header("correlation-data", request.to_string())
        .with_header("status", status.to_string());
    Ok(Verdict::Forward(vec![out]))
}

export_plugin!(HonoCommand);
