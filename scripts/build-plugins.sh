#!/usr/bin/env bash
# Builds every plugin in plugins/ for wasm32-wasip2 and copies it to plugins/dist/NAME.wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
(cd plugins && cargo build --release --target wasm32-wasip2 --quiet)
mkdir -p plugins/dist
for manifest in plugins/*/Cargo.toml; do
  name=$(basename "$(dirname "$manifest")")
  cp "plugins/target/wasm32-wasip2/release/${name//-/_}.wasm" "plugins/dist/$name.wasm"
done
echo "plugins built into plugins/dist: $(cd plugins/dist && ls | tr '\n' ' ')"
