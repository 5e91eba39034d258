#!/usr/bin/env bash
# Fuzzes every decoder that reads bytes from disk or the network (wire/fuzz), N seconds each
# (default 30). Needs cargo-fuzz (`cargo install cargo-fuzz`); on the stable toolchain,
# RUSTC_BOOTSTRAP=1 lets it pass the sanitizer flags. CI covers the same decoders with proptest.
set -euo pipefail
cd "$(dirname "$0")/../wire"
secs=${1:-30}
for target in wal_scan wal_record batch snapshot_record backup_record peer_frame; do
  RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" -- -max_total_time="$secs" -rss_limit_mb=2048
done
