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
grep -m1 'model name' /proc/cpuinfo
echo "flags: $(grep -m1 '^flags' /proc/cpuinfo | grep -o -w 'avx512f\|avx2\|fma' | sort -u | tr '\n' ' ')"
mkdir -p "$out"
config() { sed -e "s|MODEL|$model|" -e "s|OUT|$out/$1|" bench/grpo_demo_shapes.toml; }
serve() { # log file; the server's pid is printed
    RAYON_NUM_THREADS=1 "$aha" serve --model "$model" --port 0 >/dev/null 2>"$1" &
    echo $!
}
port() {
    for _ in $(seq 1 300); do
        p=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$1" | grep -o '[0-9]*$' || true)
        [ -n "$p" ] && { echo "$p"; return; }
        sleep 0.2
    done
    echo "no server came up: $1" >&2
    exit 1
}
rm -rf "$out/local"
config local > "$out/local.toml"
"$aha" grpo --config "$out/local.toml" 2>/dev/null
python3 bench/step_summary.py "$out/local"
for s in 0 1; do
    rm -rf "$out/s$s"
    a=$(serve "$out/server-a.log")
    b=$(serve "$out/server-b.log")
    pa=$(port "$out/server-a.log")
    pb=$(port "$out/server-b.log")
    { config "s$s"; printf '\n[rollout]\nengine = "openai"\nurls = ["http://127.0.0.1:%s", "http://127.0.0.1:%s"]\nmax_staleness = %s\n' "$pa" "$pb" "$s"; } > "$out/s$s.toml"
    "$aha" grpo --config "$out/s$s.toml" 2>/dev/null
    python3 bench/step_summary.py "$out/s$s"
    kill -TERM "$a" "$b"
done
