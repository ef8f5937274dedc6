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
    assert_eq!(
        t.proxy.reload().await,
        ReloadOutcome::Applied { generation: 2 }
    );
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
    assert_eq!(t.proxy.pipeline().snapshot().generation, 2);
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
    assert_eq!(t.proxy.pipeline().snapshot().generation, 2);
}
