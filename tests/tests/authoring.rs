//! The plugin author's workflow, through the real `barnabas` binary: `plugin new`, `plugin
//! build`, `plugin test`, `record` and `replay`; and a route's `shadow:` and `canary:` under
//! traffic from real MQTT clients, with outputs read back from Kafka (the embedded cluster).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use barnabas_tests::mqtt::{Ack, publish_v4};
use barnabas_tests::{TestProxy, proxy_binary, read, repo_root, scrape};
use sha2::{Digest, Sha256};

fn barnabas(args: &[&str], dir: &Path) -> Output {
    let out = Command::new(proxy_binary())
        .args(args)
        .current_dir(dir)
        // The scaffolded crate must build from cargo's cache alone.
        .env("CARGO_NET_OFFLINE", "true")
        // Kept between runs, so that a second run builds warm, as an author's would.
        .env(
            "CARGO_TARGET_DIR",
            repo_root().join("target/authoring-tests/target"),
        )
        .output()
        .expect("run barnabas");
    eprintln!(
        "barnabas {args:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `barnabas plugin new upper && barnabas plugin build upper`, once per test run: the crate's
/// directory and the component it built.
fn upper() -> &'static (PathBuf, PathBuf) {
    static UPPER: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    UPPER.get_or_init(|| {
        let work = repo_root().join("target/authoring-tests");
        std::fs::create_dir_all(&work).unwrap();
        let crate_dir = work.join("upper");
        let _ = std::fs::remove_dir_all(&crate_dir);

        let out = barnabas(&["plugin", "new", "upper"], &work);
        assert!(out.status.success());
        for file in [
            "Cargo.toml",
            "Cargo.lock",
            "src/lib.rs",
            "samples/input.jsonl",
            "samples/expected.jsonl",
            "vendor/barnabas-plugin-sdk/wit/plugin.wit",
        ] {
            assert!(crate_dir.join(file).is_file(), "{file} written");
        }
        // A directory that exists is not overwritten.
        let again = barnabas(&["plugin", "new", "upper"], &work);
        assert_eq!(again.status.code(), Some(2));
        assert!(text(&again.stderr).contains("already exists"));

        let out = barnabas(&["plugin", "build", "upper"], &work);
        assert!(out.status.success());
        let stdout = text(&out.stdout);
        let mut lines = stdout.lines();
        let wasm = PathBuf::from(lines.next().expect("the component's path"));
        assert!(
            wasm.ends_with("wasm32-wasip2/release/upper.wasm"),
            "{wasm:?}"
        );
        let digest: String = Sha256::digest(std::fs::read(&wasm).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(lines.next(), Some(format!("sha256 {digest}").as_str()));
        (crate_dir, wasm)
    })
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn acked(ack: Ack) {
    assert!(
        matches!(ack, Ack::Acked { code: 0, .. }),
        "expected an ack, got {ack:?}"
    );
}

const BASE: &str = "listeners:\n  mqtt: { bind: \"127.0.0.1:0\" }\nadmin: { bind: \"127.0.0.1:0\" }\n\
                    destinations:\n  kafka: { kind: kafka, bootstrap: embedded }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_plugin_is_tested_without_a_broker_and_routed_live_by_one_edit() {
    let (crate_dir, wasm) = upper();
    let wasm_path = wasm.display().to_string();

    // `plugin test` passes on the samples the crate came with...
    let input = crate_dir.join("samples/input.jsonl");
    let expected = crate_dir.join("samples/expected.jsonl");
    let out = barnabas(
        &[
            "plugin",
            "test",
            &wasm_path,
            "--input",
            &input.display().to_string(),
            "--expect",
            &expected.display().to_string(),
        ],
        crate_dir,
    );
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout),
        "{\"verdict\":\"forward\",\"outputs\":[{\"topic\":\"upper/dev1\",\"payload\":\"HELLO\"}]}\n\
         {\"verdict\":\"drop\",\"reason\":\"empty payload\"}\n"
    );
    // ...and catches a wrong output, naming the message.
    let wrong = crate_dir.join("samples/wrong.jsonl");
    std::fs::write(
        &wrong,
        std::fs::read_to_string(&expected)
            .unwrap()
            .replace("HELLO", "Hello"),
    )
    .unwrap();
    let out = barnabas(
        &[
            "plugin",
            "test",
            &wasm_path,
            "--input",
            &input.display().to_string(),
            "--expect",
            &wrong.display().to_string(),
            "--config",
            "{\"stamp\":\"t\"}",
        ],
        crate_dir,
    );
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out.stderr);
    assert!(
        report.contains("input.jsonl:1: topic \"upper/dev1\""),
        "{report}"
    );
    assert!(
        report.contains("2 messages: 1 as expected, 1 different"),
        "{report}"
    );

    // One edit of routes.yaml routes live traffic through it.
    let t = TestProxy::start(&format!(
        "{BASE}routes:\n  - name: other\n    from: \"mqtt:other/#\"\n    to: \"kafka:other\"\n"
    ))
    .await;
    let bootstrap = t.proxy.embedded_kafka_bootstrap().unwrap();
    std::fs::write(
        &t.path,
        format!(
            "{BASE}plugins:\n  upper: {{ wasm: \"{wasm_path}\", config: {{ stamp: v1 }} }}\n\
             routes:\n  - name: upper\n    from: \"mqtt:upper/#\"\n    plugins: [upper]\n    to: \"kafka:upper\"\n"
        ),
    )
    .unwrap();
    let pipeline = t.proxy.pipeline().clone();
    wait_for("the edit to be applied", async || {
        pipeline.snapshot().generation == 2
    })
    .await;
    acked(publish_v4(t.mqtt, "dev1", "upper/dev1", 1, b"hello").await);
    let records = read(&bootstrap, "upper", 1, Duration::from_secs(10)).await;
    assert_eq!(records[0].payload, b"HELLO");
    assert_eq!(records[0].header("stamp").as_deref(), Some("v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_then_replay_shows_exactly_the_messages_a_new_build_changes() {
    let (_, upper) = upper();
    let t = TestProxy::start(&barnabas_tests::routes(
        &format!(
            "{BASE}plugins:\n  passthrough: {{ wasm: \"{{plugin:passthrough}}\" }}\n\
             routes:\n  - name: telemetry\n    from: \"mqtt:telemetry/+\"\n    plugins: [passthrough]\n    to: \"kafka:telemetry\"\n"
        ),
        "",
    ))
    .await;
    let admin = t.proxy.admin_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("recorded.jsonl");
    let file_arg = file.display().to_string();

    // A route that does not exist is refused.
    let out = barnabas(
        &[
            "record", "--admin", &admin, "--route", "nope", "--count", "1", "--out", &file_arg,
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no route \"nope\""));

    let recorder = {
        let binary = proxy_binary();
        let args = [
            "record",
            "--admin",
            &admin,
            "--route",
            "telemetry",
            "--count",
            "6",
            "--outputs",
            "--out",
            &file_arg,
        ]
        .map(String::from);
        std::thread::spawn(move || Command::new(binary).args(args).output().unwrap())
    };
    let pipeline = t.proxy.pipeline().clone();
    wait_for("the recording to start", async || {
        pipeline.snapshot().recorders().recording()
    })
    .await;
    // Lower-case payloads change under `upper`; upper-case ones do not.
    let payloads = ["a1", "B2", "c3", "D4", "e5", "F6"];
    for (i, payload) in payloads.iter().enumerate() {
        let topic = format!("telemetry/dev{i}");
        acked(publish_v4(t.mqtt, &format!("dev{i}"), &topic, 1, payload.as_bytes()).await);
    }
    let out = recorder.join().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("recorded 6 messages"));
    let recorded = std::fs::read_to_string(&file).unwrap();
    assert_eq!(recorded.lines().count(), 6, "{recorded}");
    assert!(
        recorded
            .lines()
            .all(|l| l.contains("\"result\":{\"verdict\":\"forward\""))
    );
    // Nothing records any more once the count is reached.
    assert!(!t.proxy.pipeline().snapshot().recorders().recording());

    let config = t.path.display().to_string();
    let replace = format!("passthrough={}", upper.display());
    let out = barnabas(
        &[
            "replay",
            &file_arg,
            "--config",
            &config,
            "--route",
            "telemetry",
            "--plugin",
            &replace,
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1), "a difference exits 1");
    let diff = text(&out.stdout);
    for (i, payload) in payloads.iter().enumerate() {
        let shown = diff.contains(&format!("topic \"telemetry/dev{i}\""));
        let changes = payload.chars().any(|c| c.is_ascii_lowercase());
        assert_eq!(shown, changes, "message {i} ({payload}) in:\n{diff}");
    }
    assert!(diff.contains("\"payload\":\"C3\""), "{diff}");
    assert!(
        diff.contains("6 messages replayed on route \"telemetry\" against the recorded results: 3 different, 3 the same"),
        "{diff}"
    );

    // The same build as recorded: no difference.
    let out = barnabas(
        &[
            "replay",
            &file_arg,
            "--config",
            &config,
            "--route",
            "telemetry",
        ],
        dir.path(),
    );
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("0 different, 6 the same"));

    // A recording is input to `plugin test` too.
    let out = barnabas(
        &[
            "plugin",
            "test",
            &upper.display().to_string(),
            "--input",
            &file_arg,
        ],
        dir.path(),
    );
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).matches("\"payload\":\"E5\"").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_never_holds_an_acknowledgement_and_counts_its_differences() {
    let (_, upper) = upper();
    let t = TestProxy::start(&barnabas_tests::routes(
        &format!(
            "{BASE}plugins:\n  passthrough: {{ wasm: \"{{plugin:passthrough}}\" }}\n\
             \x20 upper: {{ wasm: \"{}\" }}\n\
             \x20 sleeper: {{ wasm: \"{{plugin:chaos}}\", config: {{ behaviour: sleep }} }}\n\
             routes:\n\
             \x20 - name: slow\n    from: \"mqtt:slow/+\"\n    plugins: [passthrough]\n    shadow: {{ passthrough: sleeper }}\n    to: \"kafka:slow\"\n\
             \x20 - name: load\n    from: \"mqtt:load/+\"\n    plugins: [passthrough]\n    shadow: {{ passthrough: upper }}\n    to: \"kafka:load\"\n",
            upper.display()
        ),
        "",
    ))
    .await;
    let admin = t.proxy.admin_addr().unwrap();
    let bootstrap = t.proxy.embedded_kafka_bootstrap().unwrap();

    // The shadow waits a second (its wall-clock bound) before it fails; the device's PUBACK does
    // not wait for it.
    acked(publish_v4(t.mqtt, "dev1", "slow/dev1", 1, b"reading").await);
    let m = scrape(admin).await;
    let finished = |m: &barnabas_tests::Metrics, route: &str| {
        ["same", "different"]
            .iter()
            .map(|r| {
                m.value(
                    "barnabas_shadow_messages_total",
                    &[("route", route), ("result", r)],
                )
            })
            .sum::<f64>()
    };
    assert_eq!(
        finished(&m, "slow"),
        0.0,
        "acknowledged before the shadow ended"
    );
    wait_for("the shadow to fail", async || {
        scrape(admin).await.value(
            "barnabas_shadow_messages_total",
            &[("route", "slow"), ("result", "different")],
        ) == 1.0
    })
    .await;
    let (_, status) = barnabas_tests::http_get(admin, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let sample = &status["shadow_differences"]["slow"][0];
    assert_eq!(sample["serving"]["verdict"], "forward", "{status}");
    assert_eq!(sample["shadow"]["verdict"], "error", "{status}");
    assert_eq!(status["routes"][0]["shadow"][0], "sleeper");

    // Under load: every message is acknowledged and delivered as the serving chain made it; the
    // shadow's results are counted and never leave.
    let n = 500;
    let lines: String = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                format!("low{i}\n")
            } else {
                format!("UP{i}\n")
            }
        })
        .collect();
    let mut pub_ = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &t.mqtt.port().to_string()])
        .args(["-q", "1", "-i", "loader", "-t", "load/dev1", "-l"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_pub is not installed: run `make setup`");
    use tokio::io::AsyncWriteExt;
    let mut stdin = pub_.stdin.take().unwrap();
    stdin.write_all(lines.as_bytes()).await.unwrap();
    drop(stdin);
    assert!(pub_.wait().await.unwrap().success());
    let records = read(&bootstrap, "load", n, Duration::from_secs(30)).await;
    assert_eq!(records.len(), n);
    assert!(
        records.iter().all(|r| !r.payload.starts_with(b"LOW")),
        "a shadow's output reached Kafka"
    );
    wait_for("every shadow run to be counted", async || {
        let m = scrape(admin).await;
        let skipped = m.value(
            "barnabas_shadow_messages_total",
            &[("route", "load"), ("result", "skipped")],
        );
        finished(&m, "load") + skipped == n as f64
    })
    .await;
    let m = scrape(admin).await;
    let different = m.value(
        "barnabas_shadow_messages_total",
        &[("route", "load"), ("result", "different")],
    );
    let same = m.value(
        "barnabas_shadow_messages_total",
        &[("route", "load"), ("result", "same")],
    );
    assert!(
        different > 0.0 && same > 0.0,
        "different {different}, same {same}"
    );
    assert!(different <= (n / 2) as f64 && same <= (n / 2) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_takes_its_share_and_keeps_each_device_across_reconnects() {
    let (_, upper) = upper();
    let t = TestProxy::start(&barnabas_tests::routes(
        &format!(
            "{BASE}plugins:\n  passthrough: {{ wasm: \"{{plugin:passthrough}}\" }}\n\
             \x20 upper: {{ wasm: \"{}\" }}\n\
             routes:\n\
             \x20 - name: canary\n    from: \"mqtt:canary/+\"\n    plugins: [passthrough]\n    canary: {{ passthrough: upper, percent: 30 }}\n    to: \"kafka:canary\"\n",
            upper.display()
        ),
        "",
    ))
    .await;
    let bootstrap = t.proxy.embedded_kafka_bootstrap().unwrap();
    let devices = 200;
    // Each device connects twice, publishing its name each time.
    for round in 0..2 {
        for d in 0..devices {
            let id = format!("device-{d}");
            let ack = publish_v4(t.mqtt, &id, &format!("canary/{id}"), 1, id.as_bytes()).await;
            assert!(
                matches!(ack, Ack::Acked { code: 0, .. }),
                "round {round} {id}: {ack:?}"
            );
        }
    }
    let records = read(&bootstrap, "canary", 2 * devices, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 2 * devices);
    let mut canary_devices = 0;
    for d in 0..devices {
        let id = format!("device-{d}");
        let upper_id = id.to_uppercase();
        let mine: Vec<&[u8]> = records
            .iter()
            .map(|r| r.payload.as_slice())
            .filter(|p| p.eq_ignore_ascii_case(id.as_bytes()))
            .collect();
        assert_eq!(mine.len(), 2, "{id}");
        assert_eq!(mine[0], mine[1], "{id} took both versions");
        if mine[0] == upper_id.as_bytes() {
            canary_devices += 1;
        }
    }
    let share = canary_devices as f64 * 100.0 / devices as f64;
    assert!((20.0..=40.0).contains(&share), "canary share {share}%");
    let m = scrape(t.proxy.admin_addr().unwrap()).await;
    let count = |version: &str| {
        m.value(
            "barnabas_canary_messages_total",
            &[
                ("route", "canary"),
                ("version", version),
                ("outcome", "delivered"),
            ],
        )
    };
    assert_eq!(count("canary"), (2 * canary_devices) as f64);
    assert_eq!(count("serving"), (2 * (devices - canary_devices)) as f64);
}
