"""Prints the median step time and phase times of a run's metrics.jsonl (steps 3 onwards), for
bench/data_parallel.sh and bench/remote_rollouts.sh."""
import json
import statistics
import sys

run = sys.argv[1]
rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl") if '"step"' in line]
tail = rows[2:]


def med(key):
    return statistics.median(r.get(key, 0.0) for r in tail)


print(
    f"{run}: {len(rows)} steps | median step {med('step_time'):.3f} s | rollout {med('time/rollout_s'):.3f} s"
    f" | collective {med('time/collective_s'):.4f} s | reward step 1 {rows[0]['reward']:.4f}, last {rows[-1]['reward']:.4f}"
    f" | logprob_diff {rows[-1].get('rollout/logprob_diff', '-')} | staleness {rows[-1].get('rollout/staleness', '-')}"
)
