//! `bench`: runs a benchmark scenario and prints its report as Markdown.
//!
//! ```sh
//! cargo run --release -p barnabas-bench -- throughput
//! cargo run --release -p barnabas-bench -- reload
//! cargo run --release -p barnabas-bench -- curves
//! ```

use clap::{Parser, Subcommand};

use barnabas_bench::connections::{self, ConnectionsArgs};
use barnabas_bench::curves::{self, CurvesArgs};
use barnabas_bench::faults::{self, FaultArgs};
use barnabas_bench::fleet::{self, FleetArgs};
use barnabas_bench::reload::{self, ReloadArgs};
use barnabas_bench::throughput::{self, ThroughputArgs};
use barnabas_bench::way_back::{self, WayBackArgs};

#[derive(Parser)]
#[command(about = "Barnabas benchmarks")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// The same messages straight into Kafka, through the proxy and through mosquitto.
    Throughput(ThroughputArgs),
    /// (b) as the work grows: plugin chain length, number of routes, payload size.
    Curves(CurvesArgs),
    /// Many MQTT connections publishing rarely: the proxy next to mosquitto, latency and cost.
    Fleet(FleetArgs),
    /// Memory per idle MQTT connection, at 10,000 connections by default.
    Connections(ConnectionsArgs),
    /// Edits of routes.yaml under MQTT QoS 1 load: write → serving time and throughput dip.
    Reload(ReloadArgs),
    /// Fault runs: the proxy killed, the broker stalled, hostile plugins, idle floods.
    Faults(FaultArgs),
    /// The way back: Kafka → proxy → N MQTT subscribers, next to mosquitto fanning out the same.
    WayBack(WayBackArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Throughput(args) => {
            let report = throughput::run(&args).await?;
            println!("{}", report.markdown(&args));
        }
        Scenario::Curves(args) => {
            let report = curves::run(&args).await?;
            println!("{}", report.markdown());
        }
        Scenario::Connections(args) => {
            let report = connections::run(&args).await?;
            println!("{}", report.markdown());
        }
        Scenario::Fleet(args) => {
            let report = fleet::run(&args).await?;
            println!("{}", report.markdown(&args));
        }
        Scenario::Reload(args) => {
            let report = reload::run(&args).await?;
            println!("{}", report.markdown(&args));
        }
        Scenario::WayBack(args) => {
            let report = way_back::run(&args).await?;
            println!("{}", report.markdown(&args));
        }
        Scenario::Faults(args) => {
            let report = faults::run(&args).await?;
            println!("{}", report.markdown());
            if report.rows.iter().any(|r| r.lost > 0) {
                anyhow::bail!("acknowledged messages were lost");
            }
        }
    }
    Ok(())
}
