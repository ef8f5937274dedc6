#!/usr/bin/env bash
# Runs every test in the workspace and closes with one summary line over all test binaries.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The example plugins' own unit tests, natively (their workspace builds for wasm32-wasip2 unless
# told otherwise), as a plugin author runs them.
host=$(rustc -vV | sed -n 's/^host: //p')
(cd plugins && cargo test --target "$host" --no-fail-fast "$@") 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
awk '/^test result:/ {
       for (i = 1; i <= NF; i++) {
         if ($(i+1) ~ /^passed;?$/) p += $i
         if ($(i+1) ~ /^failed;?$/) f += $i
         if ($(i+1) ~ /^ignored;?$/) s += $i
       }
     }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
rm -f "$log"
exit "$status"
