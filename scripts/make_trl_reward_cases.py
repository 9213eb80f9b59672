"""Dumps Python's verdicts of the TRL benchmark's two rewards on tricky and random strings, for the
parity test in crates/aha/src/cmd/bench/trl_rewards.rs.

The regexes and the reward logic are copied verbatim from bench_trl.py of the TRL GRPO peer
benchmark (the directory bench/trl_grpo.sh calls TRL_DIR): `accuracy_reward`, `format_reward`.
Standard library only (no venv needed).

Usage: python3 scripts/make_trl_reward_cases.py crates/aha/tests/fixtures/trl_grpo/reward_cases.jsonl
"""

import json
import random
import re
import sys

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
FORMAT_RE = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)


def accuracy(c, gold):
    found = ANSWER_RE.findall(c)
    return 1.0 if found and found[-1].strip() == gold else 0.0


def fmt(c):
    return 1.0 if FORMAT_RE.match(c) else 0.0


PIECES = ["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "\t", "\x1c", "\x1f", "\xa0", "\u3000",
          "4", "x", "<", ">", "/", "answer>", "<think", "</", " 4 ", "é"]
GOLDS = ["4", "4", "4", "x", "", "44", " 4"]
HAND = [
    "<think>r</think><answer>4</answer>",
    "  <think>r</think>\n<answer> 4 </answer>\n",
    "<think></think><answer></answer>",
    "<think>r</think><answer>4</answer><answer>5</answer>",
    "<answer><answer>4</answer>x</answer>",
    "<think>r</think>x<answer>4</answer>",
]


def filler(rng):
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 3)))


def near_miss(rng):
    """The well-formed shape with each part dropped at 10% and random pieces slipped in at 15%."""
    ws = lambda: rng.choice(["", " ", "\n", "\x1c", "\xa0"])
    parts = [ws(), "<think>", filler(rng), "</think>", ws(), "<answer>", rng.choice(["4", " 4 ", "x", ""]),
             "</answer>", ws()]
    out = []
    for p in parts:
        if rng.random() < 0.15:
            out.append(rng.choice(PIECES))
        if rng.random() < 0.9:
            out.append(p)
    return "".join(out)


def main():
    rng = random.Random(0)
    cases = HAND + [near_miss(rng) for _ in range(500)]
    cases += ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 10))) for _ in range(300)]
    with open(sys.argv[1], "w") as f:
        for c in cases:
            gold = rng.choice(GOLDS)
            row = {"completion": c, "gold": gold, "accuracy": accuracy(c, gold), "format": fmt(c)}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    n = len(cases)
    with open(sys.argv[1]) as f:
        rows = [json.loads(l) for l in f]
    print(f"{n} cases: {sum(r['accuracy'] for r in rows):.0f} accurate, {sum(r['format'] for r in rows):.0f} formatted")


if __name__ == "__main__":
    main()
