#!/usr/bin/env bash
# Runs `aha bench` and the PyTorch reference (bench/reference.py) on the same configs and prints
# a markdown table with each ratio aha / PyTorch. Not part of CI.
#
# Usage: bench/compare.sh [CONFIGS...]      (default: A B)
# Environment: AHA_BENCH_VENV (default bench/.venv), AHA_BENCH_TORCH / AHA_BENCH_TRANSFORMERS
# (pip requirement strings, default "torch" / "transformers"), CARGO_FEATURES (default: none),
# CARGO_FLAGS (more `cargo build` flags; the baseline kernel build, no AVX-512 kernels at all:
# CARGO_FLAGS="--no-default-features --features hub-download"),
# ITERS (measured repetitions for every run; default: each side's own, 5 for A and 2 for B).
set -euo pipefail
cd "$(dirname "$0")/.."
configs=("$@")
[ ${#configs[@]} -eq 0 ] && configs=(A B)
venv="${AHA_BENCH_VENV:-bench/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet "${AHA_BENCH_TORCH:-torch}" "${AHA_BENCH_TRANSFORMERS:-transformers}"
fi
features=()
[ -n "${CARGO_FEATURES:-}" ] && features=(--features "$CARGO_FEATURES")
# shellcheck disable=SC2206
[ -n "${CARGO_FLAGS:-}" ] && features+=(${CARGO_FLAGS})
cargo build --release -p aha "${features[@]}"
aha=target/release/aha
iters=()
[ -n "${ITERS:-}" ] && iters=(--iters "$ITERS")
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for c in "${configs[@]}"; do
    echo "== config $c" >&2
    "$aha" bench train --config "$c" "${iters[@]}" --json | tee -a "$out" >&2
    "$venv/bin/python" bench/reference.py train --config "$c" "${iters[@]}" --impl plain | tee -a "$out" >&2
    "$venv/bin/python" bench/reference.py train --config "$c" "${iters[@]}" --impl hf | tee -a "$out" >&2
    "$aha" bench rollout --config "$c" "${iters[@]}" --json | tee -a "$out" >&2
    "$venv/bin/python" bench/reference.py rollout --config "$c" "${iters[@]}" | tee -a "$out" >&2
done
grep -m1 '^cpu:' "$out" || true
date -u +"date: %Y-%m-%d %H:%M UTC"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l[6:]) for l in open(sys.argv[1]) if l.startswith("BENCH ")]
key = lambda r: (r["workload"], r["config"])
aha = {key(r): r for r in rows if "impl" not in r}
print("| workload | config | aha tok/s | aha GFLOP/s | aha % peak | aha RSS MB | PyTorch impl | PyTorch tok/s | PyTorch RSS MB | ratio aha/PyTorch |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    if "impl" not in r or key(r) not in aha:
        continue
    a = aha[key(r)]
    print(f"| {r['workload']} | {r['config']} | {a['tokens_per_s']:.0f} | {a['gflops']:.1f} | {a['peak_pct']:.1f} "
          f"| {a['peak_rss_mb']:.0f} | {r['impl']} (torch {r['torch']}) | {r['tokens_per_s']:.0f} "
          f"| {r['peak_rss_mb']:.0f} | {a['tokens_per_s'] / r['tokens_per_s']:.2f}x |")
PY
