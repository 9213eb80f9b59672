#!/usr/bin/env bash
# TRL GRPOTrainer vs `aha bench grpo`, interleaved, in one invocation. Not part of CI. Run it on an
# otherwise idle machine. What is measured, and the results: BENCHMARKS.md ("GRPO step vs TRL").
#
# The TRL side is a peer benchmark kept outside this repository: a directory holding bench_trl.py
# (TRL GRPOTrainer on CPU; the README beside it is the spec that `aha bench grpo` mirrors), setup.sh
# (makes its venv) and artifacts/ (tokenizer.json, dataset.jsonl; byte-identical copies are
# committed in crates/aha/tests/fixtures/trl_grpo/). Point TRL_DIR at that directory; unset, the
# script looks for it as shared/bench/trl_grpo in the directory that contains this checkout.
#
#   bench/trl_grpo.sh                          # 3 repeats x (generate_only, beta 0, beta 0.001) x (TRL, aha), 12 steps
#   REPEATS=1 STEPS=4 WAIT_S=0 bench/trl_grpo.sh   # smoke run
#
# 1. makes the TRL venv (if missing) as an overlay over $BASE_VENV (torch + transformers already
#    there; nothing CUDA is downloaded) with the peer benchmark's setup.sh, into $TRL_VENV (gitignored);
# 2. makes bench_trl.py's workdir (tokenizer, dataset, seed-0 model) if missing, with bench_trl.py's
#    own `prepare`, and checks it holds exactly the spec's artifacts;
# 3. builds aha (release) and runs bench/trl_grpo_compare.py: every measurement in its own process,
#    TRL and aha alternating, each behind an idle gate (wait up to $WAIT_S s for other processes to
#    use < $MAX_BUSY cores); prints median step time TRL vs aha, the ratio, peak RSS, tokens/step.
#
# Environment: REPEATS (3), STEPS (12), BETAS (0,0.001), GENERATE (1; 0 skips generate_only),
# WAIT_S (1800), MAX_BUSY (0.15), THREADS (2: torch threads / aha's RAYON_NUM_THREADS), OUT (runs/trl_grpo_compare.json), TRL_DIR (see above),
# TRL_VENV (bench/.venv-trl), BASE_VENV (bench/.venv), WORKDIR (/tmp/trl_bench_work), CARGO_FLAGS
# (more `cargo build` flags, e.g. "--no-default-features --features hub-download": the baseline
# kernel build: no AVX-512 kernels, what a CPU without AVX-512 runs).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
trl_default="$(dirname "$root")/shared/bench/trl_grpo"
if [ ! -f "${TRL_DIR:-$trl_default}/bench_trl.py" ]; then
    echo "no TRL GRPO benchmark (bench_trl.py) in ${TRL_DIR:-$trl_default}: set TRL_DIR to its directory" >&2
    exit 1
fi
trl_dir=$(cd "${TRL_DIR:-$trl_default}" && pwd)
venv=${TRL_VENV:-$root/bench/.venv-trl}
base=${BASE_VENV:-$root/bench/.venv}
workdir=${WORKDIR:-/tmp/trl_bench_work}
out=${OUT:-$root/runs/trl_grpo_compare.json}

if ! "$venv/bin/python" -c "import trl, datasets, accelerate" 2>/dev/null; then
    if [ ! -x "$base/bin/python" ]; then
        echo "no base venv at $base (torch 2.15 + transformers 5.24): run bench/compare.sh once or set BASE_VENV" >&2
        exit 1
    fi
    echo "[trl_grpo] creating the TRL venv $venv over $base" >&2
    BASE_VENV="$base" VENV="$venv" bash "$trl_dir/setup.sh" >&2
fi
py="$venv/bin/python"

if [ ! -f "$workdir/model/model.safetensors" ] || [ ! -f "$workdir/dataset.jsonl" ]; then
    echo "[trl_grpo] preparing $workdir (tokenizer, dataset, seed-0 model)" >&2
    HF_HUB_OFFLINE=1 "$py" - "$trl_dir" "$workdir" <<'PY'
import os, sys
sys.path.insert(0, sys.argv[1])
import bench_trl
os.makedirs(sys.argv[2], exist_ok=True)
info = bench_trl.prepare(sys.argv[2], "")
print(f"[trl_grpo] prepared {sys.argv[2]}: {info['n_params']} parameters", file=sys.stderr)
PY
fi
cmp -s "$workdir/dataset.jsonl" "$trl_dir/artifacts/dataset.jsonl" \
    || { echo "$workdir/dataset.jsonl differs from the spec's artifacts" >&2; exit 1; }
cmp -s "$workdir/model/tokenizer.json" "$trl_dir/artifacts/tokenizer.json" \
    || { echo "$workdir/model/tokenizer.json differs from the spec's artifacts" >&2; exit 1; }

# shellcheck disable=SC2086
cargo build --release -p aha ${CARGO_FLAGS:-} >&2
mkdir -p "$(dirname "$out")"
gen=()
[ "${GENERATE:-1}" = 0 ] && gen=(--no-generate)
"$py" bench/trl_grpo_compare.py --aha target/release/aha --trl-script "$trl_dir/bench_trl.py" \
    --workdir "$workdir" --artifacts "$trl_dir/artifacts" --repeats "${REPEATS:-3}" --steps "${STEPS:-12}" \
    --betas "${BETAS:-0,0.001}" --wait-s "${WAIT_S:-1800}" --max-busy "${MAX_BUSY:-0.15}" --threads "${THREADS:-2}" --out "$out" "${gen[@]}"
uptime
