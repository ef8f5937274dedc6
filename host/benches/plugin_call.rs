//! What a plugin call costs: `passthrough` and `enrich` on a reused instance and on a fresh one,
//! against the same transform written in native Rust.
//!
//! Run with `make bench` (which builds the plugins first); numbers are recorded in BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use barnabas::config::PluginConfig;
use barnabas::message::{Direction, Header, Headers, Protocol, Source};
use barnabas::plugin::{Plugin, PluginEngine, PluginInput, Verdict};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures::executor::block_on;

fn load(engine: &PluginEngine, name: &str, config_json: &str) -> Plugin {
    let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../plugins/dist/{name}.wasm"));
    assert!(
        wasm.exists(),
        "{} missing: run `make plugins`",
        wasm.display()
    );
    Plugin::load(
        engine,
        &PluginConfig {
            name: name.into(),
            wasm,
            location: Default::default(),
            config_json: config_json.into(),
            config_location: None,
            timeout: Duration::from_millis(10),
            memory_bytes: 16 << 20,
        },
    )
    .unwrap()
}

/// A 256-byte JSON payload, a topic and three headers, as in the design measurements.
fn sample() -> (Headers, Bytes) {
    let headers: Headers = Arc::from(vec![
        Header::new("tenant", Bytes::from_static(b"acme")),
        Header::new("content-type", Bytes::from_static(b"application/json")),
        Header::new(
            "trace",
            Bytes::from_static(b"00-4bf92f3577b34da6a3ce929d0e0e4736-01"),
        ),
    ]);
    let mut body = String::from(r#"{"temperature":42.5,"humidity":31,"note":""#);
    while body.len() < 254 {
        body.push('x');
    }
    body.push_str("\"}");
    (headers, Bytes::from(body))
}

fn input<'a>(source: &'a Source, headers: &'a Headers, payload: &'a Bytes) -> PluginInput<'a> {
    PluginInput {
        source,
        direction: Direction::Inbound,
        route: "telemetry",
        topic: "telemetry/acme/dev1",
        qos: 1,
        headers,
        key: None,
        payload,
    }
}

/// The `enrich` plugin's transform, natively.
fn native_enrich(
    fields: &serde_json::Map<String, serde_json::Value>,
    headers: &[Header],
    payload: &Bytes,
) -> (Vec<Header>, Bytes) {
    let mut body: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(payload).unwrap();
    let mut headers = headers.to_vec();
    for (k, v) in fields {
        body.insert(k.clone(), v.clone());
        headers.retain(|h| &h.name != k);
        headers.push(Header::new(
            k.clone(),
            Bytes::from(
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string()),
            ),
        ));
    }
    (headers, Bytes::from(serde_json::to_vec(&body).unwrap()))
}

fn bench(c: &mut Criterion) {
    let engine = PluginEngine::new().unwrap();
    let (headers, payload) = sample();
    let source = Source {
        protocol: Protocol::Mqtt,
        client_id: "dev1".into(),
        topic: "telemetry/acme/dev1".into(),
        qos: 1,
        identity: Some("plant-7".into()),
    };
    let passthrough = load(&engine, "passthrough", "null");
    let enrich = load(&engine, "enrich", r#"{"site":"plant-7"}"#);

    let mut group = c.benchmark_group("plugin_call");
    for (name, plugin) in [("passthrough", &passthrough), ("enrich", &enrich)] {
        group.bench_function(format!("{name}/reused_instance"), |b| {
            b.iter(|| {
                let v = block_on(plugin.call(input(&source, &headers, &payload))).unwrap();
                assert!(matches!(v, Verdict::Forward(_)));
            })
        });
        group.bench_function(format!("{name}/fresh_instance"), |b| {
            b.iter(|| {
                plugin.clear_idle();
                block_on(plugin.call(input(&source, &headers, &payload))).unwrap()
            })
        });
    }
    group.bench_function("passthrough/native", |b| {
        b.iter(|| std::hint::black_box((headers.clone(), payload.clone())))
    });
    let fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(r#"{"site":"plant-7"}"#).unwrap();
    group.bench_function("enrich/native", |b| {
        b.iter(|| native_enrich(&fields, &headers, &payload))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
