//! Barnabas's benchmark harness: a load generator of its own and the scenarios `bench` runs.
//!
//! - [`load`]: MQTT 5 QoS 1 clients that publish flat out and record every acknowledgement.
//! - [`reload`]: routes.yaml edits under load: write → serving time and the throughput dip.

pub mod load;
pub mod reload;
