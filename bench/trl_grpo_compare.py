#!/usr/bin/env python3
"""Runs TRL's GRPO benchmark workers (bench_trl.py of the peer benchmark, TRL_DIR in
bench/trl_grpo.sh) and `aha bench grpo` interleaved, each measurement in its own process, and
prints step time TRL vs aha, their ratio, peak RSS and completion tokens per step. Driven by
bench/trl_grpo.sh (which prepares the venv, the seed-0 model and the release binary); stdlib only.

Before every measurement it waits (up to --wait-s) until other processes use < --max-busy cores
(5 s window, /proc/stat), as bench_trl.py does, and records the CPU others used during the run.
Odd repeats run aha first, even repeats TRL first, so neither side always runs right after the other.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

TIMED_FROM_STEP = 3
PHASES = [
    ("rollout", "generate_s"),
    ("ref logps", "nograd_logps_fwd_s"),
    ("rewards", "rewards_s"),
    ("loss fwd", "loss_forward_s"),
    ("backward", "backward_s"),
    ("opt+other", "optimizer_and_other_s"),
]


def cpu_busy_s():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def steal_s():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[7] if len(v) > 7 else 0) / os.sysconf("SC_CLK_TCK")


def others_cores(window_s=5.0):
    b0, t0 = cpu_busy_s(), time.perf_counter()
    time.sleep(window_s)
    return (cpu_busy_s() - b0) / (time.perf_counter() - t0)


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_trl(a, kind, beta):
    cmd = [sys.executable, a.trl_script, "--workdir", a.workdir, "--threads", str(a.threads)]
    if kind == "gen":
        cmd += ["--worker", "generate", "--gen-repeats", "5"]
    else:
        cmd += ["--worker", "train", "--beta", str(beta), "--steps", str(a.steps)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-4000:] + "\n" + p.stderr[-8000:])
        raise SystemExit(f"TRL worker {cmd} failed with rc={p.returncode}")
    line = [l for l in p.stdout.splitlines() if l.startswith("@@RESULT ")][-1]
    return json.loads(line[len("@@RESULT "):])


def run_aha(a, kind, beta):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [a.aha, "bench", "grpo", "--model", os.path.join(a.workdir, "model"), "--artifacts", a.artifacts,
           "--json", out]
    cmd += ["--generate-only"] if kind == "gen" else ["--beta", str(beta), "--steps", str(a.steps)]
    try:
        # candle's thread pools follow RAYON_NUM_THREADS (TRL: torch.set_num_threads).
        env = {**os.environ, "RAYON_NUM_THREADS": str(a.threads)}
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, env=env)
        if p.returncode != 0:
            sys.stderr.write(p.stdout[-4000:] + "\n" + p.stderr[-8000:])
            raise SystemExit(f"aha {cmd} failed with rc={p.returncode}")
        with open(out) as f:
            return json.load(f)
    finally:
        os.unlink(out)


def measure(a, tool, kind, beta, rep):
    deadline = time.time() + a.wait_s
    busy = others_cores()
    while busy >= a.max_busy and time.time() < deadline:
        busy = others_cores()
    la = list(os.getloadavg())
    name = f"{tool} {'generate_only' if kind == 'gen' else f'beta {beta}'}"
    print(f"[trl_grpo] repeat {rep + 1}/{a.repeats} {name}: others use {busy:.2f} cores, loadavg {la}",
          file=sys.stderr, flush=True)
    b0, c0, s0, t0 = cpu_busy_s(), children_cpu_s(), steal_s(), time.perf_counter()
    r = (run_trl if tool == "trl" else run_aha)(a, kind, beta)
    wall = time.perf_counter() - t0
    r.update(tool=tool, kind=kind, beta=beta, repeat=rep + 1, loadavg_before=la, others_busy_cores_before=busy,
             process_wall_s=wall,
             others_busy_cores_during=max(0.0, ((cpu_busy_s() - b0) - (children_cpu_s() - c0)) / wall),
             steal_cores_during=(steal_s() - s0) / wall)
    if max(busy, r["others_busy_cores_during"]) >= a.max_busy:
        print(f"[trl_grpo] WARNING: {name} ran beside other CPU load "
              f"({r['others_busy_cores_during']:.2f} cores during): figures not trustworthy", file=sys.stderr)
    if kind == "gen":
        print(f"[trl_grpo]   {r['tokens_per_s_median']:.0f} tokens/s, peak RSS {r['peak_rss_mib']:.0f} MiB",
              file=sys.stderr)
    else:
        print(f"[trl_grpo]   step median {r['step_s']['median']:.3f} s, peak RSS {r['peak_rss_mib']:.0f} MiB",
              file=sys.stderr)
    return r


def window(r):
    steps = r["per_step"]
    timed = [s for s in steps if s["step"] >= TIMED_FROM_STEP]
    return timed or steps


def pooled_train(rs):
    steps = [s for r in rs for s in window(r)]
    med = lambda k: statistics.median(s.get(k, 0.0) for s in steps)
    toks = sum(s["completion_tokens"] for s in steps)
    return {
        "threads": sorted({r.get("threads", r.get("effective", {}).get("torch_threads")) for r in rs}, key=str),
        "step_median_s": med("step_s"),
        "step_min_s": min(s["step_s"] for s in steps),
        "per_repeat_median_s": [statistics.median(s["step_s"] for s in window(r)) for r in rs],
        "phases_median_s": {k: med(k) for _, k in PHASES},
        "completion_tokens_per_step": toks / len(steps),
        "completion_tokens_per_s": toks / sum(s["step_s"] for s in steps),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
        "others_busy_cores_during_max": max(r["others_busy_cores_during"] for r in rs),
        "timed_steps": len(steps),
    }


def pooled_gen(rs):
    times = [t for r in rs for t in r["call_times_s"]]
    n = rs[0]["new_tokens_per_call"]
    return {
        "call_median_s": statistics.median(times),
        "tokens_per_s_median": n / statistics.median(times),
        "tokens_per_s_best": n / min(times),
        "tokens_per_s_per_repeat": [r["tokens_per_s_median"] for r in rs],
        "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
        "others_busy_cores_during_max": max(r["others_busy_cores_during"] for r in rs),
    }


def cpu_line():
    """The CPU model (with its family and model numbers) and its vector flags, from /proc/cpuinfo."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return "cpu: unknown (no /proc/cpuinfo)"
    flags = sorted(set(fields.get("flags", "").split()) & {"avx512f", "avx2", "fma"})
    return (f"cpu: {fields.get('model name', '?')} (family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')}) | flags: {' '.join(flags)}")


def print_tables(summary, betas, gen):
    print("\n| measurement | step median s | step min s | per-repeat medians s | "
          + " | ".join(f"{p} s" for p, _ in PHASES) + " | tokens/step | tokens/s | peak RSS MiB | others busy |")
    print("|---" * (8 + len(PHASES)) + "|")
    for b in betas:
        for tool in ("trl", "aha"):
            s = summary[f"{tool}_beta{b}"]
            ph = " | ".join(f"{s['phases_median_s'][k]:.3f}" for _, k in PHASES)
            reps = ", ".join(f"{x:.2f}" for x in s["per_repeat_median_s"])
            print(f"| {tool.upper()} β {b} | {s['step_median_s']:.3f} | {s['step_min_s']:.3f} | {reps} | {ph} "
                  f"| {s['completion_tokens_per_step']:.0f} | {s['completion_tokens_per_s']:.0f} "
                  f"| {s['peak_rss_mib']:.0f} | {s['others_busy_cores_during_max']:.2f} |")
    print("\n| β | TRL step s (median) | aha step s (median) | TRL / aha | TRL peak RSS MiB | aha peak RSS MiB "
          "| tokens/step TRL | tokens/step aha |")
    print("|---|---|---|---|---|---|---|---|")
    for b in betas:
        t, h = summary[f"trl_beta{b}"], summary[f"aha_beta{b}"]
        print(f"| {b} | {t['step_median_s']:.3f} | {h['step_median_s']:.3f} "
              f"| **{t['step_median_s'] / h['step_median_s']:.2f}x** | {t['peak_rss_mib']:.0f} | {h['peak_rss_mib']:.0f} "
              f"| {t['completion_tokens_per_step']:.0f} | {h['completion_tokens_per_step']:.0f} |")
    if gen:
        t, h = summary["trl_generate_only"], summary["aha_generate_only"]
        print(f"\ngenerate_only (64 rows x 64 tokens): TRL {t['tokens_per_s_median']:.0f} tokens/s "
              f"(peak RSS {t['peak_rss_mib']:.0f} MiB), aha {h['tokens_per_s_median']:.0f} tokens/s "
              f"(peak RSS {h['peak_rss_mib']:.0f} MiB): aha / TRL = "
              f"{h['tokens_per_s_median'] / t['tokens_per_s_median']:.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aha", required=True, help="the aha binary (release build)")
    ap.add_argument("--trl-script", required=True, help="bench_trl.py")
    ap.add_argument("--workdir", required=True, help="bench_trl.py's workdir (holds model/ and dataset.jsonl)")
    ap.add_argument("--artifacts", required=True, help="the spec's tokenizer.json + dataset.jsonl")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--betas", default="0,0.001")
    ap.add_argument("--no-generate", action="store_true", help="skip the generate_only pair")
    ap.add_argument("--wait-s", type=int, default=1800)
    ap.add_argument("--max-busy", type=float, default=0.15)
    ap.add_argument("--threads", type=int, default=2, help="compute threads of both tools (the spec: 2)")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    betas = [b.strip() for b in a.betas.split(",") if b.strip()]
    plan = ([("gen", None)] if not a.no_generate else []) + [("train", b) for b in betas]
    runs = {}
    for rep in range(a.repeats):
        tools = ("aha", "trl") if rep % 2 else ("trl", "aha")
        for kind, beta in plan:
            for tool in tools:
                key = f"{tool}_{'generate_only' if kind == 'gen' else f'beta{beta}'}"
                runs.setdefault(key, []).append(measure(a, tool, kind, beta, rep))
    summary = {k: (pooled_gen(v) if k.endswith("generate_only") else pooled_train(v)) for k, v in runs.items()}
    print("\n" + cpu_line())
    print_tables(summary, betas, not a.no_generate)
    print(f"\nloadavg at end {list(os.getloadavg())} | {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | "
          f"{a.repeats} repeat(s), {a.steps} steps, timed from step {TIMED_FROM_STEP}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"summary": summary, "runs": runs, "args": vars(a)}, f, indent=1)
        print(f"raw results: {a.out}")


if __name__ == "__main__":
    main()
