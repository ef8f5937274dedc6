//! The fleet: many MQTT connections that each publish rarely, the shape of a fleet of devices
//! rather than of a few busy clients. By default 20,000 MQTT 5 connections each publish one QoS 1
//! message a second for a minute: (b) through the proxy (passthrough) into Kafka, (d) to
//! mosquitto with one subscriber, and (i) to mosquitto with none; (a) produces the same rate
//! straight into Kafka, for the latency the broker itself adds. The report puts the latency from
//! publish to a consumer of Kafka (to the subscriber, for mosquitto) next to each server's CPU
//! and memory. The producers keep librdkafka's default `linger.ms` of 5 ms.
//!
//! The connections open spread over a ramp, so that their once-a-second schedules spread over
//! the second instead of all landing at its start; each connection publishes only after its
//! CONNACK, so no latency holds a connection's set-up. Each connection is a descriptor in the
//! harness and in the server, so the harness raises its descriptor limit first (the servers
//! inherit it); where the hard limit stops short, the fleet is cut to fit and the report says so.

use std::path::PathBuf;

use crate::connections::{SPARE_DESCRIPTORS, raise_descriptor_limit};
use crate::load::MqttVersion;
use crate::throughput::{self, Row, ThroughputArgs};

/// `bench fleet`.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// Connections, each publishing on its own schedule.
    #[arg(long, default_value_t = 20_000)]
    pub connections: usize,
    /// Messages per second on each connection.
    #[arg(long, default_value_t = 1.0)]
    pub rate_per_connection: f64,
    /// Seconds of publishing after the ramp.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Seconds over which the connections open.
    #[arg(long, default_value_t = 20.0)]
    pub ramp: f64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// Which of (a), (b), (d) and (i) to run.
    #[arg(long, value_delimiter = ',', default_values_t = ['a', 'b', 'd', 'i'])]
    pub only: Vec<char>,
    /// The proxy binary (`cargo build --release -p barnabas`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/barnabas"))]
    pub binary: PathBuf,
    /// Where the built plugins are (`make plugins`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/dist"))]
    pub plugins: PathBuf,
    /// The proxy's worker threads (`barnabas run --workers N`); its default when absent.
    #[arg(long)]
    pub proxy_workers: Option<u16>,
}

/// What the fleet measured.
pub struct FleetReport {
    /// Connections asked for.
    pub wanted: usize,
    /// Connections run: fewer than asked when the descriptor limit stops short.
    pub connections: usize,
    /// The descriptor limit the harness and the servers ran with.
    pub descriptor_limit: u64,
    /// Messages per second offered over all connections.
    pub offered: f64,
    /// The rows of the throughput harness, in the order run.
    pub rows: Vec<Row>,
}

/// Runs the fleet through each chosen server in turn.
pub async fn run(args: &FleetArgs) -> anyhow::Result<FleetReport> {
    let limit = raise_descriptor_limit(args.connections as u64 + SPARE_DESCRIPTORS)?;
    let connections = args
        .connections
        .min(limit.saturating_sub(SPARE_DESCRIPTORS) as usize)
        .max(1);
    if connections < args.connections {
        tracing::warn!(
            limit,
            wanted = args.connections,
            connections,
            "the descriptor limit stops short of the fleet: raise the hard limit (ulimit -Hn) or run as root"
        );
    }
    let offered = args.rate_per_connection * connections as f64;
    let load = ThroughputArgs {
        messages: 0,
        connections,
        window: 4,
        payload: args.payload,
        binary: args.binary.clone(),
        plugins: args.plugins.clone(),
        only: args.only.clone(),
        mqtt_version: MqttVersion::V5,
        qos: 1,
        rate: Some(offered),
        duration: Some(args.duration),
        ramp: Some(args.ramp),
        no_latency: true,
        chain: 1,
        routes: 1,
        linger_ms: 5,
        proxy_workers: args.proxy_workers,
    };
    let rows = throughput::run(&load).await?.rows;
    Ok(FleetReport {
        wanted: args.connections,
        connections,
        descriptor_limit: limit,
        offered,
        rows,
    })
}

impl FleetReport {
    /// The report as Markdown.
    pub fn markdown(&self, args: &FleetArgs) -> String {
        let mut out = format!(
            "fleet: {} MQTT 5 connections (of {} asked; descriptor limit {}), {} QoS 1 message(s) a second each, {:.0} msg/s offered, {}-byte payloads, {} s after a {} s ramp\n\n\
             | scenario | acknowledged | p50 ms | p99 ms | p999 ms | CPU s per 1M msgs | peak RSS MiB | lost | duplicated |\n\
             |---|---|---|---|---|---|---|---|---|\n",
            self.connections,
            self.wanted,
            self.descriptor_limit,
            args.rate_per_connection,
            self.offered,
            args.payload,
            args.duration,
            args.ramp
        );
        for r in &self.rows {
            out += &r.markdown(r.acked.to_string());
        }
        // The ramp's connection set-up shares the machine with the first connections' traffic:
        // latency once every connection is in says what the fleet costs at rest.
        let after: Vec<_> = self
            .rows
            .iter()
            .filter_map(|r| Some((&r.name, r.after_ramp_ms?)))
            .filter(|(_, l)| l[0] > 0.0)
            .collect();
        if !after.is_empty() {
            out += "\nmessages sent after the ramp:\n\n| scenario | p50 ms | p99 ms | p999 ms |\n|---|---|---|---|\n";
            for (name, [p50, p99, p999]) in after {
                out += &format!("| {name} | {p50:.2} | {p99:.2} | {p999:.2} |\n");
            }
        }
        out
    }
}
