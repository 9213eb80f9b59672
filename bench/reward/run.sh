#!/usr/bin/env bash
# Reward speed bench (not CI): math-equal answers/s (aha vs math-verify, same pairs, one run) and
# sandbox runs/s of a trivial program (needs root). Creates a math-verify venv in
# ${AHA_MV_VENV:-/tmp/aha-venv-mv}. Usage: bench/reward/run.sh [PAIRS] [SANDBOX_RUNS]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
N="${1:-2000}"
RUNS="${2:-50}"
VENV="${AHA_MV_VENV:-/tmp/aha-venv-mv}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q math-verify
fi
python3 "$ROOT/bench/reward/make_pairs.py" "$N" > "$WORK/pairs.jsonl"
(cd "$ROOT" && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target-reward}" \
    cargo build -q --release -p aha-reward --example bench_rewards)
BIN="${CARGO_TARGET_DIR:-$ROOT/target-reward}/release/examples/bench_rewards"
echo "machine: $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "aha:         $("$BIN" "$WORK/pairs.jsonl" "$RUNS")"
echo "math-verify: $("$VENV/bin/python" "$ROOT/bench/reward/math_verify_bench.py" "$WORK/pairs.jsonl")"
