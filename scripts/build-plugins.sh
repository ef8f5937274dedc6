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
# A second build of the chaos fixture with its own stamp, for the tests that swap plugin builds. Its
# own target directory keeps both builds cached.
(cd plugins && CHAOS_BUILD=2 cargo build --release --target wasm32-wasip2 --quiet -p chaos --target-dir target/build2)
cp plugins/target/build2/wasm32-wasip2/release/chaos.wasm plugins/dist/chaos-build2.wasm
echo "plugins built into plugins/dist: $(cd plugins/dist && ls | tr '\n' ' ')"
