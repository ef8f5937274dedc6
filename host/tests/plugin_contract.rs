//! Loading plugins: the WIT contract is checked on load, a mismatched build is refused with what
//! to rebuild, and a bad `config` fails the load instead of the first message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use barnabas::config::PluginConfig;
use barnabas::plugin::{LoadError, Plugin, PluginEngine};

fn dist(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../plugins/dist/{name}.wasm"));
    assert!(p.exists(), "{} missing: run `make plugins`", p.display());
    p
}

fn config(name: &str, config_json: &str) -> PluginConfig {
    PluginConfig {
        name: name.into(),
        wasm: dist(name),
        location: Default::default(),
        config_json: config_json.into(),
        config_location: None,
        timeout: Duration::from_millis(10),
        memory_bytes: 16 << 20,
    }
}

fn replace_all(haystack: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut n = 0;
    let mut i = 0;
    while i + from.len() <= haystack.len() {
        if &haystack[i..i + from.len()] == from {
            haystack[i..i + from.len()].copy_from_slice(to);
            n += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    n
}

#[test]
fn a_plugin_built_against_another_contract_version_is_refused_with_what_to_rebuild() {
    let engine = PluginEngine::new().unwrap();
    let mut bytes = std::fs::read(dist("passthrough")).unwrap();
    // The same component, as if built against barnabas:plugin@0.1.0, the contract before this
    // one (same length, still valid).
    let n = ["host", "types", "current"]
        .iter()
        .map(|i| {
            replace_all(
                &mut bytes,
                format!("barnabas:plugin/{i}@0.2.0").as_bytes(),
                format!("barnabas:plugin/{i}@0.1.0").as_bytes(),
            )
        })
        .sum::<usize>();
    assert!(n > 0, "import names not found in the component");
    let err = Plugin::from_bytes(&engine, &config("passthrough", "null"), &bytes).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LoadError::Invalid(_)), "{text}");
    assert!(text.contains("barnabas:plugin@0.1.0"), "{text}");
    assert!(
        text.contains("rebuild the plugin with barnabas-plugin-sdk 0.2.0"),
        "{text}"
    );
}

#[test]
fn bad_config_fails_the_load() {
    let engine = PluginEngine::new().unwrap();
    let err = Plugin::load(
        &engine,
        &config("threshold", r#"{"field":"t","min":10,"alert_above":5}"#),
    )
    .unwrap_err();
    assert!(matches!(err, LoadError::Init(_)), "{err}");
    assert!(
        err.to_string()
            .contains("min (10) is above alert_above (5)"),
        "{err}"
    );

    let err = Plugin::load(&engine, &config("threshold", r#"{"feild":"t"}"#)).unwrap_err();
    assert!(err.to_string().contains("invalid plugin config"), "{err}");
}

#[test]
fn a_good_plugin_loads_with_its_digest() {
    let engine = PluginEngine::new().unwrap();
    let plugin = Plugin::load(&engine, &config("enrich", r#"{"site":"x"}"#)).unwrap();
    assert_eq!(plugin.name(), "enrich");
    assert_eq!(plugin.digest().len(), 64);
}
