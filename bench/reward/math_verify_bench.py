"""Times Hugging Face math-verify on the same pairs: parse(gold), parse(pred), verify."""
import json
import sys
import time

from math_verify import parse, verify

pairs = [json.loads(l) for l in open(sys.argv[1])]
t = time.perf_counter()
equal = 0
for p in pairs:
    try:
        equal += bool(verify(parse(p["gold"]), parse(p["pred"])))
    except Exception:
        pass
dt = time.perf_counter() - t
print(json.dumps({"pairs": len(pairs), "equal": equal, "seconds": dt, "per_s": len(pairs) / dt}))
