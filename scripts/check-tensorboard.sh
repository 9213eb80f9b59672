#!/usr/bin/env bash
# Cross-checks aha's hand-written TensorBoard event files with TensorBoard itself: reads RUN_DIR/tb/ with
# TensorBoard's EventFileLoader (which verifies both masked CRC-32Cs of every record) and EventAccumulator,
# and compares every scalar with RUN_DIR/metrics.jsonl (as f32). Not part of CI; run by hand:
#   cargo run -p aha-metrics --example synthetic_report -- /tmp/synthetic-run
#   scripts/check-tensorboard.sh /tmp/synthetic-run
# The venv lives in $AHA_TB_VENV (default /tmp/aha-venv-tensorboard) and is created on first use.
set -euo pipefail

RUN_DIR="${1:?usage: scripts/check-tensorboard.sh RUN_DIR}"
VENV="${AHA_TB_VENV:-/tmp/aha-venv-tensorboard}"
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q tensorboard
fi

"$VENV/bin/python" - "$RUN_DIR" <<'PY'
import glob, json, math, struct, sys
import tensorboard
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util import tensor_util

run = sys.argv[1]
rows = {}
for line in open(f"{run}/metrics.jsonl"):
    row = json.loads(line)
    rows[row["step"]] = row

def as_f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]

checked = 0
files = sorted(glob.glob(f"{run}/tb/events.out.tfevents.*"))
assert files, "no event files"
for path in files:
    events = list(EventFileLoader(path).Load())
    assert events[0].file_version == "brain.Event:2", events[0]
    for event in events[1:]:
        for value in event.summary.value:
            # EventFileLoader migrates simple_value into a scalar tensor.
            got = float(tensor_util.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
            want = rows[event.step][value.tag]
            ok = math.isnan(got) if want is None else as_f32(want) == got
            assert ok, (path, event.step, value.tag, want, got)
            checked += 1
acc = event_accumulator.EventAccumulator(f"{run}/tb")
acc.Reload()
tags = acc.Tags()["scalars"]
print(f"tensorboard {tensorboard.__version__}: {len(files)} file(s), {checked} scalars equal to metrics.jsonl, "
      f"{len(tags)} scalar tags, reward has {len(acc.Scalars('reward'))} points")
PY
