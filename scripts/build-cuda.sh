#!/usr/bin/env bash
# Checks that the `cuda` feature of the aha binary compiles and links on a machine without a GPU
# or a CUDA install: installs the toolkit (scripts/install-cuda-toolkit.sh: PyPI wheels + a stub
# libcuda), then builds `aha --features cuda` in release and runs clippy on it. Clippy uses
# --release too, so it reuses the release build's candle-kernels nvcc output instead of compiling
# the kernels a second time. Nothing is run on a GPU. CARGO_TARGET_DIR is honoured as usual.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-cuda-toolkit.sh
# shellcheck source=/dev/null
source "${AHA_CUDA_PREFIX:-/opt/aha-cuda}/env.sh"

cargo build --release -p aha --features cuda
cargo clippy --release -p aha --features cuda --all-targets -- -D warnings
