#!/usr/bin/env bash
# Runs every test corekv has: formatting, lints, unit, property, integration (real binary driven
# by the etcd-client crate and by etcdctl), crash and recovery tests. Installs what tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The layering rule: the shard crate must not pull in tonic or tokio.
if cargo tree -p shards -e normal --prefix none | grep -E '^(tonic|tokio) ' >/dev/null; then
  echo "shards depends on tonic or tokio" >&2
  exit 1
fi
# Benchmark smoke: every corekv scenario for 2 s must finish with zero failed requests (no timing
# is asserted; the figures in docs/PERFORMANCE.md come from release builds).
cargo build -p corekv -p corekv-bench -p corekv-tools
./target/debug/corekv-bench compare --only corekv --corekv-bin target/debug/corekv --duration-secs 2 --watch-scale 0.01 --fail-on-errors >/dev/null
echo "benchmark smoke: every scenario completed without errors"
# Every decoder of bytes from disk or the network, fuzzed for a few seconds each.
./scripts/fuzz.sh 5
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Every history the linearizability tests check is appended here; start it afresh.
report=target/tmp/linearizability-report.txt
rm -f "$report"
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo prints one line per binary, the last being
# the doc tests, which are few).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
if [ -f "$report" ]; then
  echo "linearizability: every history checked"
  cat "$report"
fi
exit "$status"
