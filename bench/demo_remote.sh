#!/usr/bin/env bash
# The demo with its GRPO rollouts in process, then on two `aha serve` engines with max_staleness 0
# and 1 (servers started here on 127.0.0.1, one thread each, from the in-process run's initial
# model: the trainer pushes its weights before the first rollout). Prints each run's before/after
# table; compare the held-out pass@1 after RL and the `held-out at step` lines.
#
# Usage: bench/demo_remote.sh [SEED]   (default 0). Environment: OUT (default runs/demo-remote).
set -euo pipefail
cd "$(dirname "$0")/.."
seed="${1:-0}"
out="${OUT:-runs/demo-remote}"
cargo build --release -p aha
aha=target/release/aha
# shellcheck source=bench/helpers.sh
source bench/helpers.sh
cpu_line
mkdir -p "$out"
table() { grep -A8 'held-out (' "$1" | head -9; grep 'wall time' "$1"; }
"$aha" demo --seed "$seed" --out "$out/local" > "$out/local.txt" 2> "$out/local.log"
echo "== in process"; table "$out/local.txt"; grep 'held-out at step' "$out/local.log"
for s in 0 1; do
    servers=$(serve_pair "$aha" "$out/local/model-init" "$out/server-s$s")
    read -r a b pa pb <<< "$servers"
    "$aha" demo --seed "$seed" --out "$out/s$s" --rollout-url "http://127.0.0.1:$pa" \
        --rollout-url "http://127.0.0.1:$pb" --max-staleness "$s" > "$out/s$s.txt" 2> "$out/s$s.log"
    kill -TERM "$a" "$b"
    echo "== two aha serve engines, max_staleness $s"; table "$out/s$s.txt"; grep 'held-out at step' "$out/s$s.log"
done
