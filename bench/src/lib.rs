//! Barnabas's benchmark harness: a load generator of its own and the scenarios `bench` runs.
//!
//! - [`load`]: MQTT 5 QoS 1 clients that publish flat out and record every acknowledgement.
//! - [`amqp_load`]: AMQP 1.0 senders likewise.
//! - [`peers`]: tansu, mosquitto and the proxy's binary as processes of their own.
//! - [`throughput`]: the same messages straight into Kafka, through the proxy (MQTT and AMQP,
//!   with and without plugins) and through mosquitto, side by side.
//! - [`curves`]: (b) as the work grows: plugin chain length, number of routes, payload size.
//! - [`connections`]: memory per idle MQTT connection at 10,000 connections.
//! - [`fleet`]: 20,000 connections publishing once a second each, the proxy next to mosquitto.
//! - [`reload`]: routes.yaml edits under load: write → serving time and the throughput dip.
//! - [`way_back`]: Kafka → the proxy → N MQTT subscribers, next to mosquitto fanning the same
//!   messages out to the same subscribers.
//! - [`faults`]: the fault runs of RELIABILITY.md: what clients were told was delivered against
//!   what the broker holds, while the proxy, the broker or a plugin misbehaves.

pub mod amqp_load;
pub mod connections;
pub mod curves;
pub mod faults;
pub mod fleet;
pub mod load;
pub mod peers;
pub mod pki;
pub mod reload;
pub mod throughput;
pub mod way_back;
