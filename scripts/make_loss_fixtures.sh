#!/usr/bin/env bash
# Regenerates crates/train/tests/fixtures/grpo_loss.json (TRL's GRPO loss formulas in torch, f64)
# in a venv of its own with torch from PyPI. Reuses the model-fixtures venv when it exists.
#
#   bash scripts/make_loss_fixtures.sh
#
# VENV=/path overrides the venv location (default .venv/model-fixtures).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv/model-fixtures}"

if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q "torch==2.15.0"
fi
"$VENV/bin/python" "$ROOT/scripts/make_loss_fixtures.py" "$ROOT/crates/train/tests/fixtures/grpo_loss.json"
