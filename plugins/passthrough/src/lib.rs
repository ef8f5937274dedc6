//! Forwards every message unchanged: the baseline for measuring what the plugin call costs.
use barnabas_plugin_sdk::{export_plugin, Message, NoConfig, Plugin, Verdict};

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
