#!/usr/bin/env bash
# Regenerates the LoRA/PEFT reference dumps (crates/model/tests/fixtures/lora/): first the
# adapter aha writes (a model-crate test with AHA_WRITE_LORA_FIXTURE=1), then, in a venv with
# torch + transformers + peft from PyPI, scripts/make_lora_fixtures.py (peft loads aha's adapter,
# makes its own, dumps both models' logits). VENV=/path overrides the venv (default
# .venv/model-fixtures, shared with scripts/make_model_fixtures.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv/model-fixtures}"

if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q "torch==2.15.0" "transformers==5.24.0" "safetensors" "peft"

mkdir -p "$ROOT/crates/model/tests/fixtures/lora"
(cd "$ROOT" && AHA_WRITE_LORA_FIXTURE=1 cargo test -q -p aha-model --test lora aha_adapter_fixture_is_what_aha_writes)
HF_HUB_OFFLINE=1 "$VENV/bin/python" "$ROOT/scripts/make_lora_fixtures.py"
