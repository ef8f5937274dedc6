//! Config fixtures: every `tests/config/NAME.yaml` either compiles (when no `NAME.err` stands
//! beside it) or fails with exactly the diagnostics in `NAME.err`.

use std::path::Path;

use super::*;

#[test]
fn fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config");
    let mut seen = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        seen += 1;
        let name = path.file_name().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let result = Config::parse(Path::new(name), &text);
        let expected = std::fs::read_to_string(path.with_extension("err")).ok();
        match (result, expected) {
            (Ok(_), None) => {}
            (Ok(_), Some(err)) => panic!("{}: compiled, but expected:\n{err}", path.display()),
            (Err(e), None) => panic!("{}: expected to compile, got:\n{e}", path.display()),
            (Err(e), Some(err)) => {
                if std::env::var_os("BLESS").is_some() {
                    std::fs::write(path.with_extension("err"), format!("{e}\n")).unwrap();
                    continue;
                }
                assert_eq!(
                    e.to_string().trim_end(),
                    err.trim_end(),
                    "{}",
                    path.display()
                );
            }
        }
    }
    assert!(seen >= 5, "fixtures not found in {}", dir.display());
}

#[test]
fn valid_fixture_compiles_to_what_it_says() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config");
    let path = dir.join("valid.yaml");
    let config = Config::load(&path).unwrap();
    let mqtt = &config.listeners.mqtt[0];
    assert_eq!(mqtt.receive_maximum, 10);
    assert_eq!(mqtt.max_packet_size, DEFAULT_MAX_PACKET_SIZE);
    let plugin = &config.plugins["p"];
    assert_eq!(plugin.wasm, dir.join("p.wasm"));
    assert_eq!(plugin.timeout, Duration::from_millis(5));
    assert_eq!(plugin.memory_bytes, 8 * 1024 * 1024);
    assert_eq!(plugin.config_json, r#"{"a":1}"#);
    let DestinationKind::Kafka(kafka) = &config.destinations["kafka"].kind else {
        panic!("not a Kafka destination");
    };
    assert_eq!(kafka.bootstrap, Bootstrap::Servers("localhost:9092".into()));
    assert_eq!(kafka.options["linger.ms"], "1");
    let route = &config.routes.routes()[0];
    assert_eq!(route.to.to_string(), "kafka:t.{2}");
    assert_eq!(route.outputs["side"].to_string(), "kafka:side");
    assert_eq!(
        route.on_error,
        ErrorPolicy::DeadLetter(Target::parse("kafka:dlq").unwrap())
    );
    assert_eq!(config.unmatched, UnmatchedPolicy::Drop);
}

#[test]
fn plugin_defaults() {
    let text = "listeners: { mqtt: { bind: \"127.0.0.1:1\" } }\n\
                destinations: { k: { kind: kafka, bootstrap: embedded } }\n\
                plugins: { p: { wasm: x.wasm } }\n\
                routes: [ { name: r, from: \"mqtt:#\", to: \"k:t\" } ]\n";
    let config = Config::parse(Path::new("x.yaml"), text).unwrap();
    let p = &config.plugins["p"];
    assert_eq!(p.timeout, Duration::from_millis(DEFAULT_PLUGIN_TIMEOUT_MS));
    assert_eq!(p.memory_bytes, 16 * 1024 * 1024);
    assert_eq!(p.config_json, "null");
    assert_eq!(config.unmatched, UnmatchedPolicy::Reject);
}

#[test]
fn limits_and_their_defaults() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config");
    let config = Config::load(&dir.join("limits-valid.yaml")).unwrap();
    let limits = &config.listeners.limits;
    assert_eq!(
        (limits.max_connections, limits.max_inflight_bytes),
        (12, 65536)
    );
    let mqtt = &config.listeners.mqtt[0];
    assert_eq!(
        (mqtt.max_connections, mqtt.server_keep_alive),
        (10, Some(30))
    );
    let amqp = &config.listeners.amqp[0];
    assert_eq!((amqp.channel_max, amqp.handle_max), (2, 4));
    assert_eq!(amqp.idle_timeout, Duration::from_secs(5));
    let DestinationKind::Amqp(rabbit) = &config.destinations["rabbit"].kind else {
        panic!("not an AMQP destination");
    };
    assert_eq!(rabbit.timeout, Duration::from_millis(2500));

    let config = Config::load(&dir.join("valid.yaml")).unwrap();
    assert_eq!(config.listeners.limits, Limits::default());
    assert_eq!(config.listeners.mqtt[0].server_keep_alive, None);
}

#[test]
fn destination_options_take_values_from_the_environment() {
    let home = std::env::var("HOME").unwrap_or_default();
    let yaml = r#"
listeners:
  mqtt: { bind: "127.0.0.1:1883" }
destinations:
  kafka: { kind: kafka, bootstrap: "localhost:9092", options: { sasl.password: "${HOME}" } }
routes:
  - { name: r, from: "mqtt:#", to: "kafka:out" }
"#;
    let config = Config::parse(Path::new("env.yaml"), yaml).unwrap();
    let DestinationKind::Kafka(k) = &config.destinations["kafka"].kind else {
        panic!("not a Kafka destination");
    };
    assert_eq!(k.options.get("sasl.password"), Some(&home));
}

#[test]
fn named_listeners_with_tls_and_websocket() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config");
    let config = Config::load(&dir.join("listeners-valid.yaml")).unwrap();
    let names: Vec<&str> = config
        .listeners
        .mqtt
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(names, ["mqtt", "mqtts", "ws", "ws-plain"]);
    let mqtts = &config.listeners.mqtt[1];
    let tls = mqtts.tls.as_ref().unwrap();
    assert_eq!(tls.cert, dir.join("certs/server.pem"));
    assert_eq!(tls.client_ca, Some(dir.join("certs/ca.pem")));
    assert_eq!(tls.client_auth, ClientAuth::Optional);
    assert_eq!(mqtts.websocket, None);
    assert_eq!(config.listeners.mqtt[2].websocket.as_deref(), Some("/mqtt"));
    assert_eq!(config.listeners.mqtt[3].websocket.as_deref(), Some("/mqtt"));
    assert!(config.listeners.mqtt[3].tls.is_none());
    let amqps = &config.listeners.amqp[0];
    assert_eq!(amqps.name, "amqps");
    assert_eq!(amqps.tls.as_ref().unwrap().client_auth, ClientAuth::None);
    assert_eq!(
        config.auth.client_certs,
        Some(crate::edge::auth::CertIdentity::CommonName)
    );
}

/// A generated table of 100,000 routes loads (beyond the YAML parser's default node budget) and
/// routes by first match in file order.
#[test]
fn a_table_of_100_000_routes_loads() {
    let mut yaml = String::from(
        "listeners: { mqtt: { bind: \"127.0.0.1:1\" } }\n\
         destinations:\n  kafka: { kind: kafka, bootstrap: embedded }\nroutes:\n",
    );
    for i in 0..99_999 {
        yaml += &format!(
            "  - {{ name: r{i}, from: \"mqtt:tenant-{i}/+/data\", to: \"kafka:t{i}\" }}\n"
        );
    }
    yaml += "  - { name: last, from: \"mqtt:telemetry/+/+\", to: \"kafka:telemetry\" }\n";
    let config = Config::parse(Path::new("big.yaml"), &yaml).unwrap();
    assert_eq!(config.routes.routes().len(), 100_000);
    let route = |topic| {
        config
            .routes
            .select(Protocol::Mqtt, topic)
            .map(|r| r.name.clone())
    };
    assert_eq!(route("telemetry/acme/dev1").as_deref(), Some("last"));
    assert_eq!(route("tenant-77/x/data").as_deref(), Some("r77"));
    assert_eq!(route("tenant-77/x/other"), None);
}
