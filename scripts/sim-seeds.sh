#!/usr/bin/env bash
# Runs the cluster simulation (tests/sim) on random seeds until it fails or for as many rounds as
# asked (default: forever). Each round runs 10 seeds; a failure prints the seed to reproduce:
#   COREKV_SIM_SEEDS=<seed> cargo test --test sim -- --nocapture
# Usage: [COREKV_SIM_CRASHES=0|power] scripts/sim-seeds.sh [rounds]   (0: without crashes and power cuts; power: power cuts only)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-0}"
cargo test --test sim --no-run
round=0
while [ "$rounds" -eq 0 ] || [ "$round" -lt "$rounds" ]; do
    round=$((round + 1))
    seeds=$(for _ in $(seq 10); do echo -n "$((RANDOM * 32768 + RANDOM)),"; done)
    seeds="${seeds%,}"
    echo "round $round: seeds $seeds"
    COREKV_SIM_SEEDS="$seeds" cargo test --test sim -- --nocapture 2>&1 | grep -E "^seed|panicked|failed|reproduce|^  member"
    if [ "${PIPESTATUS[0]}" -ne 0 ]; then
        exit 1
    fi
done
