#!/usr/bin/env bash
# Regenerates crates/reward/tests/fixtures/reasoning_gym.jsonl with reasoning-gym (PyPI) in its own
# venv (default /tmp/aha-venv-rg; override with AHA_RG_VENV). Runs offline once installed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${AHA_RG_VENV:-/tmp/aha-venv-rg}"
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q reasoning-gym
fi
"$VENV/bin/python" "$ROOT/scripts/reasoning-gym-referee.py" "$ROOT/crates/reward/tests/fixtures/reasoning_gym.jsonl"
