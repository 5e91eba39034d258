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
cargo test --workspace
