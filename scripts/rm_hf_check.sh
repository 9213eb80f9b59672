#!/usr/bin/env bash
# A reward model from `aha rm train` loads in `transformers` as a sequence classifier and scores
# like `aha rm score` (max |Δscore| ≤ 1e-4): scripts/rm_hf_check.sh RM_DIR DATA.jsonl
# Uses the venv of scripts/make_model_fixtures.sh (VENV=... to override).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv/model-fixtures}"
[[ -x "$VENV/bin/python" ]] || { echo "no venv at $VENV: run scripts/make_model_fixtures.sh first" >&2; exit 1; }
RM="$1"
DATA="$2"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
AHA="${AHA:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/aha}"
[[ -x "$AHA" ]] || cargo build -q -p aha --manifest-path "$ROOT/Cargo.toml"
export HF_HUB_OFFLINE=1
"$AHA" rm score --model "$RM" --data "$DATA" --out "$OUT/scored.jsonl"
"$VENV/bin/python" "$ROOT/scripts/rm_hf_check.py" "$RM" "$OUT/scored.jsonl"
