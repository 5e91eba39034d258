#!/usr/bin/env bash
# Fuzzes every decoder that reads bytes from disk or the network (wire/fuzz), N seconds each
# (default 30; CI runs 5 so a regression that crashes quickly fails the run). Needs cargo-fuzz
# (scripts/setup.sh installs it); on the stable toolchain, RUSTC_BOOTSTRAP=1 lets it pass the
# sanitizer flags. The corpus grows under wire/fuzz/corpus (not committed).
set -euo pipefail
cd "$(dirname "$0")/../wire"
secs=${1:-30}
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^wire-fuzz$')
RUSTC_BOOTSTRAP=1 cargo fuzz build -O
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in $targets; do
  if ! RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" -- -max_total_time="$secs" -rss_limit_mb=2048 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $target FAILED (the input is under wire/fuzz/artifacts/$target)" >&2
    exit 1
  fi
  echo "fuzz: $target ok ($(grep -o 'Done [0-9]* runs' "$log" | tail -n1) in ${secs}s)"
done
