"""Dump reasoning-gym verdicts (the outside referee of crates/reward/tests/referee.rs).

Generates Countdown and basic-arithmetic items with reasoning-gym, builds candidate answers (right,
right-but-reformatted, wrong, malformed) and records `score_answer` for each into
crates/reward/tests/fixtures/reasoning_gym.jsonl. A verdict is "correct" when the score is 1.0
(reasoning-gym gives partial credit such as 0.05 or 0.01 to wrong answers).

Run through scripts/reasoning-gym-referee.sh, which creates the venv.
"""

import json
import random
import re
import sys
from importlib.metadata import version

import reasoning_gym as rg


def countdown_candidates(entry, rnd):
    expr = entry["answer"]
    nums = entry["metadata"]["numbers"]
    target = entry["metadata"]["target"]
    swapped = expr.replace("+", "#").replace("-", "+").replace("#", "-")
    return [
        ("right", expr),
        ("right_spaced", re.sub(r"\s*([-+*/()])\s*", r" \1 ", expr).strip()),
        ("right_with_target", f"{expr} = {target}"),
        ("wrong_operator", swapped if swapped != expr else expr + " + 1 - 1"),
        ("missing_number", " + ".join(str(n) for n in nums[:-1])),
        ("number_twice", f"{expr} + {nums[0]} - {nums[0]}"),
        ("malformed_trailing_op", expr + " *"),
        ("malformed_text", "I cannot solve this"),
        ("power_op", f"{nums[0]}**1 * 0 + ({expr})" if rnd.random() < 0.5 else f"({expr}) * {nums[0]}**0"),
    ]


def arithmetic_candidates(entry, rnd):
    gold = entry["answer"]
    value = int(gold) if gold.lstrip("-").isdigit() else None
    wrong = str(value + rnd.choice([-2, -1, 1, 3])) if value is not None else gold + "1"
    return [
        ("right", gold),
        ("right_float", f"{gold}.0" if value is not None else gold),
        ("right_spaces", f"  {gold} "),
        ("wrong", wrong),
        ("malformed_text", "the answer"),
        ("with_unit", f"{gold} apples"),
        ("empty", ""),
    ]


def main(out_path):
    rnd = random.Random(0)
    rows = []
    cd = rg.create_dataset("countdown", size=25, seed=7)
    for entry in cd:
        for kind, cand in countdown_candidates(entry, rnd):
            score = cd.score_answer(cand, entry)
            rows.append({
                "task": "countdown",
                "numbers": entry["metadata"]["numbers"],
                "target": entry["metadata"]["target"],
                "gold": entry["answer"],
                "candidate": cand,
                "kind": kind,
                "rg_score": score,
                "rg_correct": score == 1.0,
            })
    ar = rg.create_dataset("basic_arithmetic", size=25, seed=11)
    for entry in ar:
        for kind, cand in arithmetic_candidates(entry, rnd):
            score = ar.score_answer(cand, entry)
            rows.append({
                "task": "basic_arithmetic",
                "question": entry["question"],
                "gold": entry["answer"],
                "candidate": cand,
                "kind": kind,
                "rg_score": score,
                "rg_correct": score == 1.0,
            })
    with open(out_path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} rows to {out_path} (reasoning-gym {version('reasoning-gym')})")


if __name__ == "__main__":
    main(sys.argv[1])
