#!/usr/bin/env bash
# Round trip: aha loads a checkpoint (the tiny HF fixtures, and SmolLM2's GGUF), saves it with
# `aha convert` (save_pretrained), and `transformers` loads aha's output: logits must match the
# committed references. Uses the venv of scripts/make_model_fixtures.sh (VENV=... to override).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv/model-fixtures}"
[[ -x "$VENV/bin/python" ]] || { echo "no venv at $VENV: run scripts/make_model_fixtures.sh first" >&2; exit 1; }
FIX="$ROOT/crates/model/tests/fixtures"
CACHE="${AHA_FIXTURES:-$ROOT/fixtures-cache}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

cargo build -q -p aha --manifest-path "$ROOT/Cargo.toml"
AHA="${CARGO_TARGET_DIR:-$ROOT/target}/debug/aha"
export HF_HUB_OFFLINE=1

for arch in qwen2 qwen3 llama; do
    "$AHA" convert --model "$FIX/tiny-$arch" --out "$OUT/tiny-$arch"
    "$VENV/bin/python" "$ROOT/scripts/roundtrip_check.py" tiny "$OUT/tiny-$arch" "$FIX/tiny-$arch"
done

GGUF="$CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ -s "$GGUF" ]]; then
    "$AHA" convert --model "$GGUF" --out "$OUT/smollm2"
    "$VENV/bin/python" "$ROOT/scripts/roundtrip_check.py" smollm2 "$OUT/smollm2" "$FIX/smollm2/reference.json"
else
    echo "smollm2: $GGUF missing (scripts/fetch-fixtures.sh), skipped"
fi
