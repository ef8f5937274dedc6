//! Forwards every message unchanged: the baseline for measuring what the plugin call costs.
use barnabas_plugin_sdk::{Message, NoConfig, Plugin, Verdict, export_plugin};

struct Passthrough;

impl Plugin for Passthrough {
    type Config = NoConfig;

    fn new(_: NoConfig) -> Result<Self, String> {
        Ok(Passthrough)
    }

    fn handle(&self, msg: Message) -> Result<Verdict, String> {
        Ok(msg.forward())
    }
}

export_plugin!(Passthrough);
