"""TRL GRPOTrainer on a real model (SmolLM2-135M-Instruct, the HF directory `aha convert` writes from the GGUF)
on CPU: the TRL side of bench/trl_smollm2.sh, which runs it interleaved with `aha grpo` on the same weights.

Settings of examples/grpo-smollm2.toml: chat-templated prompts, 4 prompts x 4 samples
(`per_device_train_batch_size=16`, `num_generations=4`), 64 new tokens, temperature 0.7 with no top-k/top-p,
beta 0, `loss_type="dr_grpo"`, lr 1e-5 (linear decay, TRL's default; the driver sets aha's schedule to match),
max_grad_norm 1, fp32, no vLLM, no activation checkpointing unless --grad-ckpt (aha keeps every activation, so
recomputing them would time a different algorithm). `--lora`: PEFT LoRA r 16, alpha 32, dropout 0 on
q,k,v,o,gate,up,down.

The rewards are Python ports of aha's own reward kinds, so both sides score alike:
  accuracy  aha `numeric`: the single <answer> block after the first </think> (nothing but whitespace after
            it, no repeated tags; the last \\boxed{} inside wins), parsed as a decimal, equal to the gold; 1.0
  format    aha `format`: exactly one non-empty <think>...</think> then one non-empty <answer>...</answer>,
            only whitespace around them; 1.0, weight 0.5
  tags      aha `tag_count`: 0.25 per R1 tag present exactly once; weight 0.5
`--rewards` picks the set (default all three, the set of examples/grpo-smollm2.toml); the driver writes the same set
into aha's config.

Per-step wall time is the time between `on_step_end` callbacks (the first step from `on_step_begin`). Prints one
line `@@RESULT {json}` with the step times, completion lengths, ru_maxrss of this process and the versions.

usage: python bench/trl_smollm2.py HF_DIR DATA.jsonl STEPS [--lora] [--rewards accuracy,format,tags]
       [--threads 2] [--grad-ckpt] [--out-dir DIR]
"""
import argparse
import dataclasses
import json
import os
import resource
import statistics
import time
from fractions import Fraction

ap = argparse.ArgumentParser()
ap.add_argument("hf")
ap.add_argument("data")
ap.add_argument("steps", type=int)
ap.add_argument("--lora", action="store_true")
ap.add_argument("--rewards", default="accuracy,format,tags")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--grad-ckpt", action="store_true")
ap.add_argument("--out-dir", default="/tmp/trl_smol_out")
a = ap.parse_args()

import torch

torch.set_num_threads(a.threads)
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

TAGS = ["<think>", "</think>", "<answer>", "</answer>"]


def _boxed_last(text):
    """The content of the last complete, outermost \\boxed{...}/\\fbox{...} (aha's `last_boxed`), else None."""
    last, i = None, 0
    while i < len(text):
        hit = next((c for c in ("\\boxed{", "\\fbox{") if text.startswith(c, i)), None)
        if hit is None:
            i += 1
            continue
        j, depth, start = i + len(hit), 1, i + len(hit)
        while j < len(text) and depth:
            if text[j] == "\\" and j + 1 < len(text) and text[j + 1] in "{}":
                j += 2
                continue
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth:
            break
        last, i = text[start:j - 1], j
    return last


def final_answer(c):
    """aha's `final_answer`: see the module docs; None when there is no answer."""
    end = c.find("</think>")
    if end < 0 or c[:end].count("<think>") > 1:
        return None
    tail = c[end + len("</think>"):]
    o = tail.find("<answer>")
    if o < 0:
        return None
    body_start = o + len("<answer>")
    close = tail.find("</answer>", body_start)
    if close < 0:
        return None
    body, rest = tail[body_start:close], tail[close + len("</answer>"):]
    if "<think>" in tail or "</think>" in tail or tail.count("<answer>") > 1 or tail.count("</answer>") > 1:
        return None
    if rest.strip() or not body.strip():
        return None
    ans = (_boxed_last(body) or body).strip()
    return ans or None


def parse_decimal(t):
    """aha's `parse_decimal`: `-1,234.5`, `$3`, `45%` exactly, as a Fraction; None otherwise."""
    t = t.strip().lstrip("$").rstrip("%").strip()
    neg = t.startswith("-")
    t = t[1:] if neg else (t[1:] if t.startswith("+") else t)
    t = t.replace(",", "")
    whole, _, frac = t.partition(".")
    if (not whole and not frac) or len(t) > 400 or not all(ch in "0123456789" for ch in whole + frac):
        return None
    v = Fraction(int(whole + frac), 10 ** len(frac))
    return -v if neg else v


def well_formed(c):
    """aha's `is_well_formed` (the prompt does not open <think>)."""
    if [c.count(t) for t in TAGS] != [1, 1, 1, 1]:
        return False
    rest = c.lstrip()
    if not rest.startswith("<think>"):
        return False
    thought, _, after = rest[len("<think>"):].partition("</think>")
    after = after.lstrip()
    if not after.startswith("<answer>"):
        return False
    answer, _, tail = after[len("<answer>"):].partition("</answer>")
    return bool(thought.strip()) and bool(answer.strip()) and not tail.strip()


def text(c):
    return c[0]["content"] if isinstance(c, list) else c


def accuracy(completions, answer, **kw):
    out = []
    for c, gold in zip(completions, answer):
        g, p = parse_decimal(gold), final_answer(text(c))
        p = parse_decimal(p) if p is not None else None
        out.append(1.0 if g is not None and p is not None and g == p else 0.0)
    return out


def fmt(completions, **kw):
    return [1.0 if well_formed(text(c)) else 0.0 for c in completions]


def tags(completions, **kw):
    return [0.25 * sum(text(c).count(t) == 1 for t in TAGS) for c in completions]


REWARDS = {"accuracy": (accuracy, 1.0), "format": (fmt, 0.5), "tags": (tags, 0.5)}
names = [n.strip() for n in a.rewards.split(",") if n.strip()]
funcs, weights = [REWARDS[n][0] for n in names], [REWARDS[n][1] for n in names]

rows = [json.loads(l) for l in open(a.data)]
ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]} for r in rows])


class T(TrainerCallback):
    def __init__(s):
        s.t, s.last, s.logs = [], None, []

    def on_step_begin(s, args, state, control, **k):
        if s.last is None:
            s.last = time.time()

    def on_step_end(s, args, state, control, **k):
        now = time.time()
        s.t.append(now - s.last)
        s.last = now

    def on_log(s, args, state, control, logs=None, **k):
        if logs and "completions/mean_length" in logs:
            s.logs.append({k2: logs.get(k2) for k2 in ("completions/mean_length", "reward", "loss", "grad_norm")})


tok = AutoTokenizer.from_pretrained(a.hf)
tok.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(a.hf, dtype=torch.float32)
kw = {}
if a.lora:
    from peft import LoraConfig

    kw["peft_config"] = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                                   target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"])
# transformers 5.24 renamed gradient_checkpointing (TRL's default True) to activation_checkpointing.
ckpt = "activation_checkpointing" if any(f.name == "activation_checkpointing" for f in dataclasses.fields(GRPOConfig)) \
    else "gradient_checkpointing"
args = GRPOConfig(output_dir=a.out_dir, per_device_train_batch_size=16, gradient_accumulation_steps=1,
                  num_generations=4, max_completion_length=64, temperature=0.7, top_p=1.0, top_k=0,
                  learning_rate=1e-5, beta=0.0, loss_type="dr_grpo", reward_weights=weights, use_cpu=True,
                  bf16=False, report_to="none", max_steps=a.steps, logging_steps=1, save_strategy="no",
                  disable_tqdm=True, dataloader_num_workers=0, seed=0, **{ckpt: a.grad_ckpt})
cb = T()
tr = GRPOTrainer(model=model, processing_class=tok, reward_funcs=funcs, args=args, train_dataset=ds, callbacks=[cb],
                 **kw)
trainable = sum(p.numel() for p in tr.model.parameters() if p.requires_grad)
tr.train()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
ts = cb.t[1:] if len(cb.t) > 2 else cb.t
import peft, transformers, trl

print("@@RESULT " + json.dumps({
    "lora": a.lora, "rewards": names, "reward_weights": weights, "grad_ckpt": a.grad_ckpt,
    "threads": torch.get_num_threads(), "trainable_params": trainable, "steps": len(cb.t),
    "step_s_median": statistics.median(ts), "step_s": [round(x, 3) for x in cb.t],
    "completion_mean_length": [l["completions/mean_length"] for l in cb.logs],
    "reward": [l["reward"] for l in cb.logs], "peak_rss_mb": round(rss),
    "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                 "peft": peft.__version__}}), flush=True)
