#!/usr/bin/env bash
# Writes crates/train/tests/fixtures/prompts.parquet with pyarrow (the writer Hugging Face
# `datasets` uses), snappy-compressed like a Hub dataset shard: a `question` / `answer` prompt
# set with a list column, an integer answer, a null answer and an empty question (the last two
# must be skipped and reported by row number). Run from the repository root.
set -euo pipefail
VENV="${VENV:-.venv-parquet}"
[ -x "$VENV/bin/python" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q pyarrow==21.0.0; }
"$VENV/bin/python" - <<'PY'
import pyarrow as pa, pyarrow.parquet as pq
rows = [
    {"question": "Compute 3+4-1.", "answer": "6", "numbers": [3, 4, 1]},
    {"question": "Compute 2*5.", "answer": "10", "numbers": [2, 5]},
    {"question": "Use 1, 2, 3 to make 6.", "answer": None, "numbers": [1, 2, 3]},
    {"question": "", "answer": "0", "numbers": []},
    {"question": "Ünïcode: 7-2?", "answer": "5", "numbers": [7, 2]},
]
table = pa.Table.from_pylist(rows, schema=pa.schema([
    ("question", pa.string()), ("answer", pa.string()), ("numbers", pa.list_(pa.int64())),
]))
pq.write_table(table, "crates/train/tests/fixtures/prompts.parquet", compression="snappy", row_group_size=2)
print("wrote crates/train/tests/fixtures/prompts.parquet:", table.num_rows, "rows")
PY
