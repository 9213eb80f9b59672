"""GSM8K-like gold/pred pairs for the reward speed bench: integer or decimal gold answers and
model-style predictions (boxed, "The answer is", currency, thousands separators, wrong values)."""
import json
import random
import sys

rnd = random.Random(0)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
for i in range(n):
    gold = rnd.choice([rnd.randint(0, 500), rnd.randint(1000, 99999), round(rnd.uniform(0, 100), 2)])
    value = gold if rnd.random() < 0.7 else gold + rnd.choice([1, 2, 10])
    shown = f"{value:,}" if isinstance(value, int) and value >= 1000 and rnd.random() < 0.5 else str(value)
    style = rnd.randrange(4)
    if style == 0:
        pred = f"She pays 3 * 4 = 12 dollars first, then the rest. So the answer is $\\boxed{{{shown}}}$."
    elif style == 1:
        pred = f"Each box holds 6 eggs, so 6 * 7 = 42 in total.\n#### {shown}"
    elif style == 2:
        pred = f"Adding up, we get ${shown}. The answer is {shown}."
    else:
        pred = f"Therefore, the total is \\boxed{{{shown} \\text{{ dollars}}}}"
    print(json.dumps({"gold": str(gold), "pred": pred}))
