//! Drops readings below a floor and copies readings above a ceiling to an alerts output.
//!
//! ```yaml
//! config: { field: temperature, min: 0, alert_above: 80, alert_output: alerts }
//! ```
//! A JSON payload whose `field` is below `min` is dropped; one above `alert_above` is forwarded and
//! also sent to the route's named output `alert_output` (default `alerts`). A payload without the
//! field, or with a field that is not a number, is forwarded unchanged; one that is not JSON is an
//! error.
use barnabas_plugin_sdk::{Message, Output, Plugin, Verdict, export_plugin};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    field: String,
    min: Option<f64>,
    alert_above: Option<f64>,
    #[serde(default = "default_alert_output")]
    alert_output: String,
}

fn default_alert_output() -> String {
    "alerts".into()
}

struct Threshold(Config);

impl Plugin for Threshold {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if let (Some(min), Some(max)) = (config.min, config.alert_above) {
            if min > max {
                return Err(format!("min ({min}) is above alert_above ({max})"));
            }
        }
        Ok(Threshold(config))
    }

    fn handle(&self, msg: Message) -> Result<Verdict, String> {
        let body: Value = serde_json::from_slice(&msg.payload)
            .map_err(|e| format!("payload is not JSON: {e}"))?;
        let Some(reading) = body.get(&self.0.field).and_then(Value::as_f64) else {
            return Ok(msg.forward());
        };
        if self.0.min.is_some_and(|min| reading < min) {
            return Ok(Verdict::Drop(format!(
                "{} {reading} is below {}",
                self.0.field,
                self.0.min.unwrap_or_default()
            )));
        }
        let out = Output::keep();
        if self.0.alert_above.is_some_and(|max| reading > max) {
            let alert = out.clone().to(&self.0.alert_output);
            return Ok(Verdict::Forward(vec![out, alert]));
        }
        Ok(Verdict::Forward(vec![out]))
    }
}

export_plugin!(Threshold);

/// Native unit tests: `cargo test -p threshold` in plugins/ (no Wasm, no proxy).
#[cfg(test)]
mod tests {
    use super::*;
    use barnabas_plugin_sdk::{log, testing};

    fn plugin() -> Threshold {
        testing::build(r#"{"field":"temperature","min":-40,"alert_above":80}"#).unwrap()
    }

    #[test]
    fn a_hot_reading_is_also_sent_to_alerts() {
        log::info("logging works in a native test");
        let verdict = plugin()
            .handle(testing::message("telemetry/acme/dev1", r#"{"temperature":90}"#))
            .unwrap();
        assert_eq!(
            verdict,
            Verdict::Forward(vec![Output::keep(), Output::keep().to("alerts")])
        );
    }

    #[test]
    fn a_cold_reading_is_dropped() {
        let verdict = plugin()
            .handle(testing::message("telemetry/acme/dev1", r#"{"temperature":-50}"#))
            .unwrap();
        assert!(matches!(verdict, Verdict::Drop(_)));
    }

    #[test]
    fn a_config_error_names_the_field() {
        let err = testing::build::<Threshold>(r#"{"min":1}"#).err().unwrap();
        assert_eq!(err, "invalid plugin config: missing field `field`");
    }
}
