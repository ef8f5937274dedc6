//! Cost as the work grows: scenario (b) of [`crate::throughput`] (MQTT QoS 1 → the proxy → Kafka)
//! with plugin chains of 0, 1, 3 and 5 passthroughs, behind routing tables of 10, 1,000 and
//! 100,000 routes, and next to (a) (straight into Kafka) at payloads from 64 B to 1 MiB.
//!
//! Each point is a full throughput run of its own (a fresh proxy and tansu), so the points of one
//! curve are back to back on the same machine; compare along a curve, not with other days.

use std::fmt::Write as _;

use crate::throughput::{self, Row, ThroughputArgs};

/// `bench curves`.
#[derive(Debug, Clone, clap::Args)]
pub struct CurvesArgs {
    /// The load of every point (messages, connections, window, MQTT version, QoS...). Its
    /// `--chain`, `--routes` and `--payload` are the defaults the other curves hold fixed.
    #[command(flatten)]
    pub load: ThroughputArgs,
    /// Plugin chain lengths.
    #[arg(long, value_delimiter = ',', default_values_t = [0u64, 1, 3, 5])]
    pub chain_lengths: Vec<u64>,
    /// Routing table sizes.
    #[arg(long, value_delimiter = ',', default_values_t = [10u64, 1_000, 100_000])]
    pub route_counts: Vec<u64>,
    /// Payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 4_096, 65_536, 1_048_576])]
    pub payload_sizes: Vec<usize>,
    /// At large payloads, fewer messages: at most this many bytes per point.
    #[arg(long, default_value_t = 1 << 30)]
    pub bytes_per_point: u64,
}

/// One point: the value on the curve's axis and the rows measured there.
pub struct Point {
    /// The chain length, route count or payload size.
    pub at: u64,
    /// (b), or (a) then (b) on the payload curve.
    pub rows: Vec<Row>,
}

/// The three curves.
pub struct Report {
    /// By plugin chain length.
    pub chain: Vec<Point>,
    /// By number of routes.
    pub routes: Vec<Point>,
    /// By payload size.
    pub payload: Vec<Point>,
}

/// Runs every point of every curve.
pub async fn run(args: &CurvesArgs) -> anyhow::Result<Report> {
    let base = ThroughputArgs {
        only: vec!['b'],
        no_latency: true,
        ..args.load.clone()
    };
    let mut report = Report {
        chain: Vec::new(),
        routes: Vec::new(),
        payload: Vec::new(),
    };
    for &chain in &args.chain_lengths {
        eprintln!("curves: chain of {chain}");
        let load = ThroughputArgs {
            chain,
            ..base.clone()
        };
        report.chain.push(point(chain, &load).await?);
    }
    for &routes in &args.route_counts {
        eprintln!("curves: {routes} routes");
        let load = ThroughputArgs {
            routes,
            ..base.clone()
        };
        report.routes.push(point(routes, &load).await?);
    }
    for &payload in &args.payload_sizes {
        eprintln!("curves: {payload}-byte payloads");
        let messages = (args.bytes_per_point / payload.max(1) as u64).clamp(1, base.messages);
        let load = ThroughputArgs {
            payload,
            messages,
            only: vec!['a', 'b'],
            ..base.clone()
        };
        report.payload.push(point(payload as u64, &load).await?);
    }
    Ok(report)
}

/// One throughput run, as the point `at` of a curve.
async fn point(at: u64, load: &ThroughputArgs) -> anyhow::Result<Point> {
    let rows = throughput::run(load).await?.rows;
    Ok(Point { at, rows })
}

impl Report {
    /// The three curves as Markdown tables.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out += &by_point(
            "By plugin chain length (copies of passthrough)",
            "plugins",
            &self.chain,
        );
        out += &by_point(
            "By number of routes (the load's route last in the file)",
            "routes",
            &self.routes,
        );
        if !self.payload.is_empty() {
            out += "By payload size, (a) straight into Kafka next to (b) through the proxy:\n\n\
                    | payload | messages | (a) msg/s | (a) MB/s | (b) msg/s | (b) MB/s | b/a | (b) CPU s per 1M msgs | (b) p99 ms | lost / duplicated (b) |\n\
                    |---|---|---|---|---|---|---|---|---|---|\n";
            for p in &self.payload {
                let mb = |r: &Row| r.rate * p.at as f64 / 1e6;
                let (Some(a), Some(b)) = (p.rows.first(), p.rows.get(1)) else {
                    continue;
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {:.1} | {:.0} | {:.1} | {:.2} | {} | {:.2} | {} / {} |",
                    size(p.at),
                    b.acked,
                    a.rate,
                    mb(a),
                    b.rate,
                    mb(b),
                    b.rate / a.rate.max(1e-9),
                    cpu(b),
                    b.latency_ms[1],
                    b.lost,
                    b.duplicated
                );
            }
        }
        out
    }
}

/// One curve of (b) rows as a table, its axis in the first column; empty without points.
fn by_point(title: &str, axis: &str, points: &[Point]) -> String {
    if points.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "{title}:\n\n| {axis} | msg/s | CPU s per 1M msgs | p50 ms | p99 ms | lost / duplicated |\n\
         |---|---|---|---|---|---|\n"
    );
    for p in points {
        for r in &p.rows {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {} | {:.2} | {:.2} | {} / {} |",
                p.at,
                r.rate,
                cpu(r),
                r.latency_ms[0],
                r.latency_ms[1],
                r.lost,
                r.duplicated
            );
        }
    }
    out + "\n"
}

/// A row's CPU seconds per million messages, or `-`.
fn cpu(r: &Row) -> String {
    r.cpu_per_million.map_or("-".into(), |c| format!("{c:.1}"))
}

/// 64 B, 4 KiB, 1 MiB.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}
