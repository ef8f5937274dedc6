//! `barnabas plugin new` and `barnabas plugin build`.
//!
//! `new` writes a crate that builds offline: the SDK this binary was built with is written into
//! the crate (`vendor/barnabas-plugin-sdk`, or `--sdk` points at another copy), with a
//! `Cargo.lock` pinning its dependencies to the versions the example plugins build with, so
//! `cargo` finds everything in its cache. `build` adds the `wasm32-wasip2` target when it is
//! missing, builds, and says where the component is and its sha256 (the digest `/status` shows
//! for a loaded plugin).

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::AuthoringError;
use crate::plugin::WIT_PACKAGE;

/// The SDK as this binary carries it.
const SDK_FILES: [(&str, &str); 4] = [
    ("Cargo.toml", include_str!("../../../plugin-sdk/Cargo.toml")),
    ("README.md", include_str!("../../../plugin-sdk/README.md")),
    ("src/lib.rs", include_str!("../../../plugin-sdk/src/lib.rs")),
    (
        "wit/plugin.wit",
        include_str!("../../../plugin-sdk/wit/plugin.wit"),
    ),
];

/// The example plugins' lock file: the SDK's dependencies at versions known to build.
const LOCK: &str = include_str!("../../../plugins/Cargo.lock");

const TEMPLATE_MANIFEST: &str = include_str!("template/Cargo.toml.txt");
const TEMPLATE_LIB: &str = include_str!("template/lib.rs.txt");
const TEMPLATE_README: &str = include_str!("template/README.md.txt");
const TEMPLATE_INPUT: &str = include_str!("template/input.jsonl.txt");
const TEMPLATE_EXPECTED: &str = include_str!("template/expected.jsonl.txt");

/// The target plugins are built for.
pub const TARGET: &str = "wasm32-wasip2";

/// Writes a new plugin crate at `dir`, whose last component names it. With `sdk`, the crate
/// depends on the SDK there instead of a copy of its own. Returns the files written.
pub fn new_plugin(dir: &Path, sdk: Option<&Path>) -> Result<Vec<PathBuf>, AuthoringError> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| AuthoringError::Other(format!("{} names no plugin", dir.display())))?;
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(AuthoringError::Other(format!(
            "{name:?} is not a crate name: a letter, then letters, digits, `-` or `_`"
        )));
    }
    if dir.exists() {
        return Err(AuthoringError::Other(format!(
            "{} already exists; pick a new directory",
            dir.display()
        )));
    }
    let artifact = name.replace('-', "_");
    let type_name: String = name
        .split(['-', '_'])
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect();
    let sdk_path = match sdk {
        Some(path) => std::path::absolute(path)
            .map_err(|source| AuthoringError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .display()
            .to_string(),
        None => "vendor/barnabas-plugin-sdk".to_string(),
    };
    let shown_dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let fill = |template: &str| {
        template
            .replace("{{NAME}}", name)
            .replace("{{TYPE}}", &type_name)
            .replace("{{ARTIFACT}}", &artifact)
            .replace("{{SDK}}", &sdk_path)
            .replace("{{DIR}}", &shown_dir.display().to_string())
            .replace(
                "{{WIT}}",
                WIT_PACKAGE.rsplit('@').next().unwrap_or_default(),
            )
    };
    let mut files: Vec<(PathBuf, String)> = vec![
        (dir.join("Cargo.toml"), fill(TEMPLATE_MANIFEST)),
        (dir.join("Cargo.lock"), LOCK.to_string()),
        (dir.join("src/lib.rs"), fill(TEMPLATE_LIB)),
        (dir.join("README.md"), fill(TEMPLATE_README)),
        (dir.join("samples/input.jsonl"), fill(TEMPLATE_INPUT)),
        (dir.join("samples/expected.jsonl"), fill(TEMPLATE_EXPECTED)),
        (dir.join(".gitignore"), "/target\n".to_string()),
    ];
    if sdk.is_none() {
        for (file, text) in SDK_FILES {
            files.push((
                dir.join("vendor/barnabas-plugin-sdk").join(file),
                text.to_string(),
            ));
        }
    }
    for (path, text) in &files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| AuthoringError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(path, text).map_err(|source| AuthoringError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

/// A built plugin.
#[derive(Debug)]
pub struct Built {
    /// The component file.
    pub wasm: PathBuf,
    /// Its sha256, hex encoded.
    pub sha256: String,
}

/// Builds the plugin crate at `dir` for `wasm32-wasip2` in release mode, adding the target first
/// if rustup does not have it. Cargo's own output goes to this process's standard error.
pub fn build_plugin(dir: &Path) -> Result<Built, AuthoringError> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(AuthoringError::Other(format!(
            "{} is not a plugin crate: it has no Cargo.toml",
            dir.display()
        )));
    }
    ensure_target()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(&manifest)
        .status()
        .map_err(|e| AuthoringError::Other(format!("cannot run cargo: {e}")))?;
    if !status.success() {
        return Err(AuthoringError::Other(format!(
            "cargo build failed ({status}); its errors are above"
        )));
    }
    let metadata = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .map_err(|e| AuthoringError::Other(format!("cannot run cargo metadata: {e}")))?;
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout)
        .map_err(|e| AuthoringError::Other(format!("cargo metadata: {e}")))?;
    let target_dir = metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| AuthoringError::Other("cargo metadata names no target directory".into()))?;
    let manifest = std::fs::canonicalize(&manifest).unwrap_or(manifest);
    let name = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| {
            p["manifest_path"]
                .as_str()
                .and_then(|m| std::fs::canonicalize(m).ok())
                == Some(manifest.clone())
        })
        .and_then(|p| p["name"].as_str())
        .ok_or_else(|| AuthoringError::Other("cargo metadata does not list the crate".into()))?;
    let wasm = target_dir
        .join(TARGET)
        .join("release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    let bytes = std::fs::read(&wasm).map_err(|source| AuthoringError::Io {
        path: wasm.clone(),
        source,
    })?;
    let sha256 = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Built { wasm, sha256 })
}

/// Adds the `wasm32-wasip2` target through rustup when it is missing. Without rustup, the build
/// says for itself whether the target is there.
fn ensure_target() -> Result<(), AuthoringError> {
    let Ok(installed) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        return Ok(());
    };
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|t| t.trim() == TARGET)
    {
        return Ok(());
    }
    eprintln!("adding the {TARGET} target (rustup target add {TARGET})");
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .map_err(|e| AuthoringError::Other(format!("cannot run rustup: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(AuthoringError::Other(format!(
            "rustup target add {TARGET} failed ({status})"
        )))
    }
}
