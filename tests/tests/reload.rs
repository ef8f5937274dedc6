//! Reload on request (SIGHUP in the binary): a valid edit is applied whole, unchanged plugins and
//! destinations are kept, an invalid edit or a listener change leaves the old routes serving.

use std::sync::Arc;
use std::time::Duration;

use barnabas::reload::ReloadOutcome;
use barnabas_tests::mqtt::{Ack, publish_v5};
use barnabas_tests::{TestProxy, read, simple_routes};
use rdkafka::mocking::MockCluster;

fn routes(topic: &str, stamp: &str) -> String {
    format!(
        r#"
plugins:
  stamp: {{ wasm: "{{plugin:chaos}}", config: {{ behaviour: none, stamp: {stamp} }} }}
  passthrough: {{ wasm: "{{plugin:passthrough}}" }}
routes:
  - name: r
    from: "mqtt:in/#"
    plugins: [stamp, passthrough]
    to: "kafka:{topic}"
"#
    )
}

const OK: Ack = Ack::Acked {
    code: 0,
    reason: None,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_apply_whole_or_not_at_all() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let t = TestProxy::start(&simple_routes(&bootstrap, &routes("first", "v1"))).await;
    assert_eq!(publish_v5(t.mqtt, "c", "in/a", 1, b"1", None).await, OK);
    let before = t.proxy.pipeline().snapshot();
    assert_eq!(before.generation, 1);

    // A new topic and a new plugin config.
    std::fs::write(&t.path, simple_routes(&bootstrap, &routes("second", "v2"))).unwrap();
    // The file watcher may apply it first; an explicit reload (SIGHUP) applies it in any case.
    let applied = match t.proxy.reload().await {
        ReloadOutcome::Applied { generation } => generation,
        other => panic!("expected the edit applied, got {other:?}"),
    };
    assert!(applied >= 2);
    assert_eq!(publish_v5(t.mqtt, "c", "in/a", 1, b"2", None).await, OK);
    let after = t.proxy.pipeline().snapshot();
    // The unchanged plugin and the destination are carried over, not rebuilt.
    assert!(Arc::ptr_eq(
        before.plugin("passthrough").unwrap(),
        after.plugin("passthrough").unwrap()
    ));
    assert!(!Arc::ptr_eq(
        before.plugin("stamp").unwrap(),
        after.plugin("stamp").unwrap()
    ));
    assert!(Arc::ptr_eq(
        before.destination("kafka").unwrap(),
        after.destination("kafka").unwrap()
    ));

    let first = read(&bootstrap, "first", 1, Duration::from_secs(10)).await;
    assert_eq!(first[0].header("plugin-version").as_deref(), Some("v1"));
    let second = read(&bootstrap, "second", 1, Duration::from_secs(10)).await;
    assert_eq!(second[0].header("plugin-version").as_deref(), Some("v2"));

    // A typo: rejected with its location, the previous routes keep serving.
    let typo = simple_routes(&bootstrap, &routes("third", "v3")).replace("    to: ", "    too: ");
    std::fs::write(&t.path, typo).unwrap();
    match t.proxy.reload().await {
        ReloadOutcome::Rejected(e) => {
            assert!(e.contains(&format!("{}:", t.path.display())), "{e}");
            assert!(e.contains("unknown field `too`"), "{e}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(t.proxy.pipeline().snapshot().generation, applied);
    assert_eq!(publish_v5(t.mqtt, "c", "in/a", 1, b"3", None).await, OK);
    let second = read(&bootstrap, "second", 2, Duration::from_secs(10)).await;
    assert_eq!(second.len(), 2, "still routed by the previous config");

    // A listener change needs a restart: nothing is applied.
    let moved =
        simple_routes(&bootstrap, &routes("fourth", "v4")).replace("127.0.0.1:0", "127.0.0.1:1");
    std::fs::write(&t.path, moved).unwrap();
    assert!(matches!(
        t.proxy.reload().await,
        ReloadOutcome::RestartNeeded(_)
    ));
    assert_eq!(t.proxy.pipeline().snapshot().generation, applied);
}

/// Waits until the proxy serves a generation after `after`, or 5 s pass.
async fn next_generation(t: &barnabas::Proxy, after: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let g = t.pipeline().snapshot().generation;
        if g > after || std::time::Instant::now() > deadline {
            return g;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_edits_in_every_save_style() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let t = TestProxy::start(&simple_routes(&bootstrap, &routes("w1", "v1"))).await;
    let dir = t.path.parent().unwrap().to_path_buf();

    // Write a temporary file, then rename it over routes.yaml (most editors).
    let tmp = dir.join(".routes.yaml.swp");
    std::fs::write(&tmp, simple_routes(&bootstrap, &routes("w2", "v2"))).unwrap();
    std::fs::rename(&tmp, &t.path).unwrap();
    assert_eq!(
        next_generation(&t.proxy, 1).await,
        2,
        "rename-over save not applied"
    );

    // Truncate and write in place.
    std::fs::write(&t.path, simple_routes(&bootstrap, &routes("w3", "v3"))).unwrap();
    assert_eq!(
        next_generation(&t.proxy, 2).await,
        3,
        "in-place save not applied"
    );

    // An invalid edit changes nothing, however long we wait.
    std::fs::write(&t.path, "routes: [").unwrap();
    assert_eq!(next_generation(&t.proxy, 3).await, 3);
    assert_eq!(
        publish_v5(t.mqtt, "c", "in/x", 1, b"after-typo", None).await,
        OK
    );
    let w3 = read(&bootstrap, "w3", 1, Duration::from_secs(10)).await;
    assert_eq!(w3[0].header("plugin-version").as_deref(), Some("v3"));

    // Fixing it applies.
    std::fs::write(&t.path, simple_routes(&bootstrap, &routes("w4", "v4"))).unwrap();
    assert_eq!(next_generation(&t.proxy, 3).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap_and_plugin_file_swap() {
    let kafka = MockCluster::new(1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    barnabas_tests::init_logging();
    // The layout Kubernetes gives a mounted ConfigMap: routes.yaml -> ..data/routes.yaml,
    // ..data -> ..v1, replaced by renaming a new ..data symlink over the old one.
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("p.wasm");
    std::fs::copy(barnabas_tests::plugin("passthrough"), &plugin).unwrap();
    let yaml = |topic: &str| {
        simple_routes(
            &bootstrap,
            &format!(
                "plugins:\n  p: {{ wasm: \"{}\", config: {{ site: lab }} }}\nroutes:\n  - name: r\n    from: \"mqtt:#\"\n    plugins: [p]\n    to: \"kafka:{topic}\"\n",
                plugin.display()
            ),
        )
    };
    for (version, topic) in [("..v1", "cm1"), ("..v2", "cm2")] {
        std::fs::create_dir(dir.path().join(version)).unwrap();
        std::fs::write(dir.path().join(version).join("routes.yaml"), yaml(topic)).unwrap();
    }
    std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/routes.yaml", dir.path().join("routes.yaml")).unwrap();
    let config = barnabas::Config::load(&dir.path().join("routes.yaml")).unwrap();
    let proxy = barnabas::Proxy::start(config).await.unwrap();

    std::os::unix::fs::symlink("..v2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    assert_eq!(
        next_generation(&proxy, 1).await,
        2,
        "symlink swap not applied"
    );

    // A new plugin build dropped in place of the old one (enrich accepts the same config).
    let before = proxy.pipeline().snapshot();
    std::fs::copy(barnabas_tests::plugin("enrich"), &plugin).unwrap();
    assert_eq!(
        next_generation(&proxy, 2).await,
        3,
        "plugin swap not applied"
    );
    assert!(!Arc::ptr_eq(
        before.plugin("p").unwrap(),
        proxy.pipeline().snapshot().plugin("p").unwrap()
    ));
    let addr = proxy.mqtt_addr().unwrap();
    assert_eq!(publish_v5(addr, "c", "x", 1, b"{\"t\":1}", None).await, OK);
    let records = read(&bootstrap, "cm2", 1, Duration::from_secs(10)).await;
    assert_eq!(records[0].header("site").as_deref(), Some("lab"));
}

/// Plugins deployed as `plugins/current -> release-N`: re-pointing the symlink is seen (its own
/// directory is watched), and after it a rebuild inside the new release is seen too (the new
/// target is watched from then on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinked_plugin_directory_is_re_resolved() {
    let kafka = MockCluster::new(1).unwrap();
    kafka.create_topic("releases", 1, 1).unwrap();
    let bootstrap = kafka.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    for (release, build) in [("release-1", "chaos"), ("release-2", "chaos-build2")] {
        std::fs::create_dir_all(plugins.join(release)).unwrap();
        std::fs::copy(
            barnabas_tests::plugin(build),
            plugins.join(release).join("stamp.wasm"),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("release-1", plugins.join("current")).unwrap();
    let path = dir.path().join("routes.yaml");
    let yaml = simple_routes(
        &bootstrap,
        &format!(
            "plugins:\n  stamp: {{ wasm: \"{}\", config: {{ behaviour: none, stamp_build: true }} }}\nroutes:\n  - {{ name: r, from: \"mqtt:#\", plugins: [stamp], to: \"kafka:releases\" }}\n",
            plugins.join("current").join("stamp.wasm").display()
        ),
    );
    std::fs::write(&path, yaml).unwrap();
    let proxy = barnabas::Proxy::start(barnabas::Config::load(&path).unwrap())
        .await
        .unwrap();
    let addr = proxy.mqtt_addr().unwrap();

    // Re-point `current` the way a deploy does: a new symlink renamed over the old one.
    std::os::unix::fs::symlink("release-2", plugins.join("current.tmp")).unwrap();
    std::fs::rename(plugins.join("current.tmp"), plugins.join("current")).unwrap();
    assert_eq!(
        next_generation(&proxy, 1).await,
        2,
        "re-pointing the plugin directory was not seen"
    );
    assert_eq!(publish_v5(addr, "c", "x", 1, b"a", None).await, OK);

    // A rebuild inside the new release.
    std::fs::copy(
        barnabas_tests::plugin("chaos"),
        plugins.join("release-2").join("stamp.wasm"),
    )
    .unwrap();
    assert_eq!(
        next_generation(&proxy, 2).await,
        3,
        "a rebuild in the new target was not seen"
    );
    assert_eq!(publish_v5(addr, "c", "x", 1, b"b", None).await, OK);
    let records = read(&bootstrap, "releases", 2, Duration::from_secs(10)).await;
    let builds: Vec<_> = records.iter().map(|r| r.header("chaos-build")).collect();
    assert_eq!(builds, [Some("2".to_string()), Some("1".to_string())]);
}
