//! The benchmark scenarios on a tiny load, so that they cannot rot: each must finish, lose nothing
//! and produce its numbers. How fast is for the benchmark runs, never asserted here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use barnabas_bench::load::MqttVersion;
use barnabas_bench::reload::{self, ReloadArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_scenario_runs() {
    let args = ReloadArgs {
        clients: 2,
        window: 8,
        edits: 2,
        interval_ms: 300,
        kafka: None,
        plugins: concat!(env!("CARGO_MANIFEST_DIR"), "/../plugins/dist").into(),
    };
    let report = reload::run(&args).await.expect("the reload scenario runs");
    assert_eq!(report.edits.len(), 2);
    assert!(report.acked > 0);
    assert_eq!(report.refused, 0);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.baseline_rate > 0.0);
    let table = report.markdown(&args);
    assert!(table.contains("| 2 | route topic |"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_scenarios_run() {
    use barnabas_bench::throughput::{self, ThroughputArgs};

    let args = ThroughputArgs {
        messages: 400,
        ..small_load()
    };
    let report = throughput::run(&args)
        .await
        .expect("the throughput scenarios run");
    assert_eq!(report.rows.len(), 6);
    assert!(report.tls_connects.is_some_and(|r| r > 0.0));
    let (rate, a, b) = report.half_rate.clone().expect("the half-rate runs");
    assert!(rate > 0.0);
    for row in report.rows.iter().chain([&a, &b]) {
        assert_eq!(row.acked, 400, "{}", row.name);
        assert_eq!(row.lost, 0, "{}", row.name);
        assert_eq!(row.duplicated, 0, "{}", row.name);
        assert!(row.rate > 0.0, "{}", row.name);
        assert!(row.latency_ms[0] > 0.0, "{}", row.name);
    }
    let table = report.markdown(&args);
    assert!(table.contains("ratios: b/a"), "{table}");
    assert!(table.contains("latency added by the proxy"), "{table}");
    assert!(table.contains("new TLS connections per second"), "{table}");
}

/// A small fleet: 300 connections opened over a second, each publishing once a second for two
/// seconds, through the proxy and through mosquitto (with and without a subscriber).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_runs() {
    use barnabas_bench::fleet::{self, FleetArgs};

    let load = small_load();
    let args = FleetArgs {
        connections: 300,
        rate_per_connection: 1.0,
        duration: 2.0,
        ramp: 1.0,
        payload: 128,
        only: vec!['b', 'd', 'i'],
        binary: load.binary,
        plugins: load.plugins,
        // The proxy on one worker thread, as `--proxy-workers 1` runs it.
        proxy_workers: Some(1),
    };
    let report = fleet::run(&args).await.expect("the fleet runs");
    assert_eq!(report.connections, 300);
    assert_eq!(report.rows.len(), 3);
    for row in &report.rows {
        // Every connection publishes on its CONNACK and then once a second until the stop, three
        // seconds after the first opened: three messages each, fewer where connecting was slow.
        assert!(
            (600..=1200).contains(&row.acked),
            "{}: {}",
            row.name,
            row.acked
        );
        assert_eq!((row.lost, row.duplicated), (0, 0), "{}", row.name);
    }
    assert!(report.rows[0].latency_ms[1] > 0.0);
    let table = report.markdown(&args);
    assert!(table.contains("fleet: 300 MQTT 5 connections"), "{table}");
    assert!(table.contains("| (d) MQTT 5 QoS 1 → mosquitto"), "{table}");
}

/// The other load shapes: MQTT 3.1.1 at QoS 2 on a schedule for a time, and MQTT 5 at QoS 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shapes_run() {
    use barnabas_bench::throughput::{self, ThroughputArgs};

    let timed = ThroughputArgs {
        messages: 0,
        only: vec!['b'],
        mqtt_version: MqttVersion::V311,
        qos: 2,
        rate: Some(400.0),
        duration: Some(1.0),
        no_latency: true,
        ..small_load()
    };
    let report = throughput::run(&timed)
        .await
        .expect("MQTT 3.1.1 QoS 2 runs");
    let row = &report.rows[0];
    assert!(row.name.contains("MQTT 3.1.1 QoS 2"), "{}", row.name);
    // About 400 messages in the second; the schedule keeps it well under flat out.
    assert!((100..=600).contains(&row.acked), "{}", row.acked);
    assert_eq!((row.lost, row.duplicated), (0, 0));
    assert!(report.half_rate.is_none());

    let qos0 = ThroughputArgs {
        messages: 300,
        mqtt_version: MqttVersion::V5,
        qos: 0,
        rate: None,
        duration: None,
        ..timed
    };
    let report = throughput::run(&qos0).await.expect("MQTT 5 QoS 0 runs");
    let row = &report.rows[0];
    assert_eq!(row.acked, 300);
    // QoS 0 has no acknowledgement to lose against: on loopback nothing is lost either way.
    assert_eq!((row.lost, row.duplicated), (0, 0));
}

/// The curves: chains of 0 and 3 plugins, a table of 100 routes, and 8 KiB payloads. The payload
/// point sends 4 messages per connection, fewer than fit the client's request channel, so its
/// producer finishes while the event loop is still busy: the case where a load that dropped
/// rumqttc's event-loop future opened a second connection with its own client id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curves_run() {
    use barnabas_bench::curves::{self, CurvesArgs};
    use barnabas_bench::throughput::ThroughputArgs;

    let args = CurvesArgs {
        load: ThroughputArgs {
            messages: 200,
            ..small_load()
        },
        chain_lengths: vec![0, 3],
        route_counts: vec![100],
        payload_sizes: vec![8 << 10],
        bytes_per_point: 64 << 10,
    };
    let report = curves::run(&args).await.expect("the curves run");
    let sized = |points: &[curves::Point]| {
        points
            .iter()
            .flat_map(|p| &p.rows)
            .map(|r| (r.acked, r.lost, r.duplicated))
            .collect::<Vec<_>>()
    };
    assert_eq!(sized(&report.chain), vec![(200, 0, 0); 2]);
    assert_eq!(sized(&report.routes), vec![(200, 0, 0)]);
    // (a) and (b), 64 KiB of 8 KiB messages each.
    assert_eq!(sized(&report.payload), vec![(8, 0, 0); 2]);
    let table = report.markdown();
    assert!(table.contains("| 3 | "), "{table}");
    assert!(table.contains("| 100 | "), "{table}");
    assert!(table.contains("| 8 KiB | 8 | "), "{table}");
}

/// A small MQTT 5 QoS 1 load of every scenario (a to f) through the debug proxy, for the tests
/// to adjust.
fn small_load() -> barnabas_bench::throughput::ThroughputArgs {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    barnabas_bench::throughput::ThroughputArgs {
        messages: 100,
        connections: 2,
        window: 8,
        payload: 128,
        binary: proxy_binary(),
        plugins: root.join("plugins/dist"),
        only: Vec::new(),
        mqtt_version: MqttVersion::V5,
        qos: 1,
        rate: None,
        duration: None,
        ramp: None,
        no_latency: false,
        chain: 1,
        routes: 1,
        linger_ms: 1,
        proxy_workers: None,
    }
}

/// The proxy's debug binary, built if this test runs before the host crate's tests built it.
fn proxy_binary() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let binary = root.join("target/debug/barnabas");
    if !binary.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "barnabas", "--bin", "barnabas"])
            .current_dir(&root)
            .status()
            .expect("cargo build");
        assert!(status.success());
    }
    binary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_scenario_runs() {
    use barnabas_bench::connections::{self, ConnectionsArgs};

    let args = ConnectionsArgs {
        count: 300,
        binary: proxy_binary(),
    };
    let report = connections::run(&args)
        .await
        .expect("the connections scenario runs");
    assert_eq!(report.opened, 300, "{:?}", report.first_error);
    assert!(report.rss_before_kib > 0 && report.rss_after_kib > 0);
    assert!(report.markdown().contains("300 of 300"));
}

/// The short form of every fault run: whatever breaks, no acknowledged message is lost. (The
/// latency ratios are measured, not asserted: they belong to RELIABILITY.md's long runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_runs_lose_nothing() {
    use barnabas_bench::faults::{self, FaultArgs};

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let args = FaultArgs {
        faults: Vec::new(),
        long: false,
        binary: proxy_binary(),
        plugins: root.join("plugins/dist"),
        stall_secs: None,
    };
    let report = faults::run(&args).await.expect("the fault runs run");
    println!("{}", report.markdown());
    assert_eq!(report.rows.len(), 5);
    for row in &report.rows {
        assert!(row.acked > 0, "{row:?}");
        assert_eq!(row.lost, 0, "{row:?}");
        assert_eq!(row.found, row.acked, "{row:?}");
    }
}

/// The way back: Kafka → proxy → subscribers next to mosquitto, every delivery accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn way_back_scenario_runs() {
    use barnabas_bench::way_back::{self, WayBackArgs};

    let args = WayBackArgs {
        messages: 300,
        subscribers: 2,
        payload: 128,
        binary: proxy_binary(),
    };
    let report = way_back::run(&args)
        .await
        .expect("the way-back scenario runs");
    assert_eq!(report.rows.len(), 2);
    for row in &report.rows {
        assert_eq!(row.deliveries, 600, "{}", row.name);
        assert_eq!(row.lost, 0, "{}", row.name);
        assert_eq!(row.duplicated, 0, "{}", row.name);
        assert!(row.rate > 0.0 && row.latency_ms[0] > 0.0, "{}", row.name);
    }
    assert!(report.markdown(&args).contains("deliveries/s"));
}
