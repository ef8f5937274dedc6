//! What choosing a route costs as the routing table grows: 10, 1,000 and 100,000 routes with
//! wildcard filters, the message taken by the last route in file order (the worst case for a scan),
//! or by none. The same lookup as a scan in file order is measured next to it, for comparison.
//!
//! Run with `make bench-routes`; numbers are recorded in BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;

use barnabas::message::Protocol;
use barnabas::router::{ErrorPolicy, Route, RouteTable, Target, TopicFilter};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn route(name: String, filter: &str) -> Route {
    Route {
        name,
        protocol: Protocol::Mqtt,
        filter: TopicFilter::parse(filter).unwrap(),
        plugins: vec!["passthrough".into()],
        to: Target::parse("kafka:telemetry.{2}").unwrap(),
        outputs: BTreeMap::new(),
        on_error: ErrorPolicy::Reject,
        source: None,
        shadow: None,
        canary: None,
    }
}

/// `n` routes: per-tenant filters of four shapes (`+` first, `+` inside, `#` last, exact), then
/// `telemetry/+/+` last of all.
fn table(n: usize) -> RouteTable {
    let mut routes: Vec<Route> = (0..n - 1)
        .map(|i| {
            let filter = match i % 4 {
                0 => format!("+/tenant-{i}/status"),
                1 => format!("tenant-{i}/+/data"),
                2 => format!("tenant-{i}/events/#"),
                _ => format!("tenant-{i}/commands/reset"),
            };
            route(format!("r{i}"), &filter)
        })
        .collect();
    routes.push(route("telemetry".into(), "telemetry/+/+"));
    RouteTable::new(routes)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_select");
    for n in [10, 1_000, 100_000] {
        let table = table(n);
        group.bench_with_input(BenchmarkId::new("last_route", n), &table, |b, t| {
            b.iter(|| {
                let r = t.select(Protocol::Mqtt, black_box("telemetry/acme/dev1"));
                assert_eq!(r.map(|r| r.name.as_str()), Some("telemetry"));
            })
        });
        group.bench_with_input(BenchmarkId::new("no_route", n), &table, |b, t| {
            b.iter(|| t.select(Protocol::Mqtt, black_box("tenant-x/unknown/dev1")))
        });
        // A scan in file order, what the table did before it had an index.
        group.bench_with_input(BenchmarkId::new("scan_last_route", n), &table, |b, t| {
            b.iter(|| {
                t.routes()
                    .iter()
                    .find(|r| r.filter.matches(black_box("telemetry/acme/dev1")))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
