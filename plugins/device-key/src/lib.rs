//! Sets the Kafka key to the device id taken from the topic, as Eclipse Hono keys telemetry.
//!
//! ```yaml
//! config: { level: 3 }   # 1-based topic level; default: the last level
//! ```
//! With the default, `telemetry/acme/dev1` gets key `dev1`, so one device's records stay in order
//! on one partition. A topic with fewer levels than `level` is an error.
use barnabas_plugin_sdk::{Message, Output, Plugin, Verdict, export_plugin};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    level: Option<usize>,
}

struct DeviceKey(Config);

impl Plugin for DeviceKey {
    type Config = Option<Config>;

    fn new(config: Option<Config>) -> Result<Self, String> {
        let config = config.unwrap_or_default();
        if config.level == Some(0) {
            return Err("level counts from 1".into());
        }
        Ok(DeviceKey(config))
    }

    fn handle(&self, msg: Message) -> Result<Verdict, String> {
        let device = match self.0.level {
            Some(n) => msg.topic_levels().nth(n - 1),
            None => msg.topic_levels().last(),
        }
        .filter(|level| !level.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| format!("topic {:?} has no device id level", msg.topic))?;
        Ok(Verdict::Forward(vec![Output::keep().with_key(device)]))
    }
}

export_plugin!(DeviceKey);
