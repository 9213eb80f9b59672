#!/usr/bin/env bash
# GRPO with rollouts in process vs on two `aha serve` engines (max_staleness 0 and 1), the same
# job (bench/grpo_demo_shapes.toml); prints each run's median step and rollout times, the
# engine-trainer log-prob gap and the staleness. Servers run one thread each on this machine.
#
# Usage: bench/remote_rollouts.sh [MODEL]   (default runs/demo/grpo/checkpoints/step-000150).
# Environment: OUT (default runs/bench-remote), CARGO_FEATURES (features of the build, e.g. mpi).
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-runs/demo/grpo/checkpoints/step-000150}"
out="${OUT:-runs/bench-remote}"
cargo build --release -p aha ${CARGO_FEATURES:+--features "$CARGO_FEATURES"}
aha=target/release/aha
# shellcheck source=bench/helpers.sh
source bench/helpers.sh
cpu_line
mkdir -p "$out"
config() { demo_shapes "$model" "$out/$1"; }
rm -rf "$out/local"
config local > "$out/local.toml"
"$aha" grpo --config "$out/local.toml" 2>/dev/null
python3 bench/step_summary.py "$out/local"
for s in 0 1; do
    rm -rf "$out/s$s"
    servers=$(serve_pair "$aha" "$model" "$out/server-s$s")
    read -r a b pa pb <<< "$servers"
    { config "s$s"; printf '\n[rollout]\nengine = "openai"\nurls = ["http://127.0.0.1:%s", "http://127.0.0.1:%s"]\nmax_staleness = %s\n' "$pa" "$pb" "$s"; } > "$out/s$s.toml"
    "$aha" grpo --config "$out/s$s.toml" 2>/dev/null
    python3 bench/step_summary.py "$out/s$s"
    kill -TERM "$a" "$b"
done
