#!/usr/bin/env bash
# Regenerates the model crate's Python reference dumps (crates/model/tests/fixtures/) in a venv of
# its own: torch + transformers + tokenizers + gguf + safetensors from PyPI (torch's PyPI wheel pulls
# the CUDA libraries: several GB, once). Needs scripts/fetch-fixtures.sh to have run.
#
#   bash scripts/make_model_fixtures.sh                 # everything
#   bash scripts/make_model_fixtures.sh --only chat     # chat | tiny | smollm2 (repeatable)
#
# VENV=/path overrides the venv location (default .venv/model-fixtures). Prints what it wrote.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv/model-fixtures}"

if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q \
    "torch==2.15.0" "transformers==5.24.0" "tokenizers==0.23.3" "safetensors" "gguf" "numpy" "jinja2" "accelerate"

bash "$ROOT/scripts/fetch-fixtures.sh"
HF_HUB_OFFLINE=1 "$VENV/bin/python" "$ROOT/scripts/make_model_fixtures.py" "$@"
