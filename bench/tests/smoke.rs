//! The benchmark scenarios on a tiny load, so that they cannot rot: each must finish, lose nothing
//! and produce its numbers. How fast is for the benchmark runs, never asserted here.

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
