//! Adds the fields of its config to a JSON object payload, and each as a header.
//!
//! ```yaml
//! plugins:
//!   enrich:
//!     wasm: plugins/dist/enrich.wasm
//!     config: { site: plant-7, line: 3 }
//! ```
//! turns `{"temperature":42}` into `{"temperature":42,"site":"plant-7","line":3}` with headers
//! `site: plant-7` and `line: 3`. A payload that is not a JSON object is an error, so the message
//! follows the route's `on_error`.
use barnabas_plugin_sdk::{Message, Output, Plugin, Verdict, export_plugin};
use serde_json::{Map, Value};

struct Enrich {
    fields: Map<String, Value>,
}

impl Plugin for Enrich {
    type Config = Map<String, Value>;

    fn new(fields: Map<String, Value>) -> Result<Self, String> {
        if fields.is_empty() {
            return Err("enrich needs at least one field in its config".into());
        }
        Ok(Enrich { fields })
    }

    fn handle(&self, msg: Message) -> Result<Verdict, String> {
        let mut body: Map<String, Value> = serde_json::from_slice(&msg.payload)
            .map_err(|e| format!("payload is not a JSON object: {e}"))?;
        let mut out = Output::keep();
        for (name, value) in &self.fields {
            body.insert(name.clone(), value.clone());
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.set_header(name, text);
        }
        out.set_payload(serde_json::to_vec(&body).map_err(|e| e.to_string())?);
        Ok(Verdict::Forward(vec![out]))
    }
}

export_plugin!(Enrich);
