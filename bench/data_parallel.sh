#!/usr/bin/env bash
# Data-parallel throughput on one machine: the same GRPO job (bench/grpo_demo_shapes.toml) as one
# process with 2 threads and as 2 MPI ranks with 1 thread each, REPEATS times; prints the median
# step, rollout and collective times of each run. Needs an `--features mpi` build and mpirun.
#
# Usage: bench/data_parallel.sh [MODEL]   (default runs/demo/grpo/checkpoints/step-000150, which
# `aha demo` writes). Environment: REPEATS (default 2), OUT (default runs/bench-dp).
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-runs/demo/grpo/checkpoints/step-000150}"
out="${OUT:-runs/bench-dp}"
cargo build --release -p aha --features mpi
aha=target/release/aha
# shellcheck source=bench/helpers.sh
source bench/helpers.sh
cpu_line
for i in $(seq 1 "${REPEATS:-2}"); do
    for mode in one two; do
        rm -rf "$out/$mode"
        mkdir -p "$out"
        demo_shapes "$model" "$out/$mode" > "$out/$mode.toml"
        if [ "$mode" = one ]; then
            RAYON_NUM_THREADS=2 "$aha" grpo --config "$out/$mode.toml"
        else
            mpirun --allow-run-as-root --oversubscribe --bind-to core -np 2 -x RAYON_NUM_THREADS=1 \
                "$aha" grpo --config "$out/$mode.toml"
        fi 2>/dev/null
        python3 bench/step_summary.py "$out/$mode"
    done
done
