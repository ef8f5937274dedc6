#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers that read untrusted input, with libFuzzer on the pinned
# stable toolchain: the targets are built with the sanitizer-coverage instrumentation cargo-fuzz
# passes (stable flags; only its address-sanitizer mode needs nightly), in fuzz/'s own workspace
# and target directory.
#
#   scripts/fuzz.sh [--runs N | --seconds S] [TARGET...]
#
# Each target starts from its committed seeds (fuzz/corpus/TARGET, read only) and keeps what it
# finds in fuzz/work/TARGET. A crash, a hang (over 5 s for one input) or running out of memory
# (over 2 GiB) stops the target and leaves the input under fuzz/artifacts/TARGET/; the script
# exits non-zero. Prints one summary line per target: executions, time, coverage.
set -euo pipefail
cd "$(dirname "$0")/.."

limit=(-max_total_time=60)
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) limit=(-runs="$2"); shift 2 ;;
    --seconds) limit=(-max_total_time="$2"); shift 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(mqtt_decoder amqp_guard routes_yaml)

export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# With an explicit --target, RUSTFLAGS reach only the code being fuzzed, not build scripts and
# proc macros (which cannot link against libFuzzer's coverage callbacks).
host=$(rustc -vV | awk '/^host:/ {print $2}')
cargo build --release --manifest-path fuzz/Cargo.toml --target-dir fuzz/target --target "$host" --bins

status=0
for target in "${targets[@]}"; do
  mkdir -p "fuzz/work/$target" "fuzz/artifacts/$target"
  log="fuzz/artifacts/$target/last-run.log"
  if ! "fuzz/target/$host/release/$target" "fuzz/work/$target" "fuzz/corpus/$target" \
      "${limit[@]}" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="fuzz/artifacts/$target/" > "$log" 2>&1; then
    status=1
    echo "fuzz $target: FAILED, see $log and fuzz/artifacts/$target/"
    tail -n 30 "$log"
    continue
  fi
  runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
  secs=$(awk '/stat::total_time_s|Done [0-9]+ runs in/ {for (i=1;i<=NF;i++) if ($i ~ /^[0-9]+$/) v=$i} END {print v}' "$log")
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1)
  echo "fuzz $target: ${runs:-?} executions, 0 crashes, 0 hangs, 0 out-of-memory (${cov:-cov: ?}; log $log)"
done
exit "$status"
