"""PyTorch reference for `aha bench`: the same two Qwen2-shaped configs and workloads.

Training (batch 16 x 128 random tokens, forward + cross-entropy + backward + AdamW) runs with a
plain PyTorch module (`--impl plain`) or with transformers' Qwen2ForCausalLM (`--impl hf`);
rollout (16 random 16-token prompts, 128 new tokens, sampling at temperature 1 with no top-k/top-p,
KV cache, no EOS) runs with transformers' `generate`. Threads = physical cores. FLOPs are counted
exactly as `crates/aha/src/cmd/bench.rs` counts them. Each run prints one `BENCH {json}` line.

Run through bench/compare.sh, which creates the virtual environment.
"""

import argparse
import json
import math
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH, TRAIN_LEN, PROMPT_LEN, NEW_TOKENS = 16, 128, 16, 128
CONFIGS = {
    "A": dict(vocab=512, hidden=256, layers=4, heads=4, kv=2, inter=768, tied=True),
    "B": dict(vocab=32000, hidden=768, layers=12, heads=12, kv=4, inter=2048, tied=False),
}


def physical_cores():
    pairs, phys, procs = set(), None, 0
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "processor":
                procs += 1
            elif key == "physical id":
                phys = value
            elif key == "core id" and phys is not None:
                pairs.add((phys, value))
    return len(pairs) or procs or 1


def matmul_params(c):
    hd = c["hidden"] // c["heads"]
    q, kv, h, i = c["heads"] * hd, c["kv"] * hd, c["hidden"], c["inter"]
    return c["layers"] * (h * q + 2 * h * kv + q * h + 3 * h * i) + c["vocab"] * h


def forward_flops_per_token(c, context):
    return 2 * matmul_params(c) + 4 * c["layers"] * c["hidden"] * context


# --- a plain Qwen2 module -------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, self.nh, self.nkv = c["hidden"], c["heads"], c["kv"]
        self.hd = h // self.nh
        self.input_layernorm = RMSNorm(h)
        self.q_proj = nn.Linear(h, self.nh * self.hd)
        self.k_proj = nn.Linear(h, self.nkv * self.hd)
        self.v_proj = nn.Linear(h, self.nkv * self.hd)
        self.o_proj = nn.Linear(self.nh * self.hd, h, bias=False)
        self.post_attention_layernorm = RMSNorm(h)
        self.gate_proj = nn.Linear(h, c["inter"], bias=False)
        self.up_proj = nn.Linear(h, c["inter"], bias=False)
        self.down_proj = nn.Linear(c["inter"], h, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        y = self.input_layernorm(x)
        q = self.q_proj(y).view(b, t, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(y).view(b, t, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(y).view(b, t, self.nkv, self.hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        g = self.nh // self.nkv
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd) + mask
        out = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1)
        x = x + self.o_proj(out)
        y = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(y)) * self.up_proj(y))


class PlainQwen2(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed = nn.Embedding(c["vocab"], c["hidden"])
        self.layers = nn.ModuleList(Block(c) for _ in range(c["layers"]))
        self.norm = RMSNorm(c["hidden"])
        self.lm_head = nn.Linear(c["hidden"], c["vocab"], bias=False)
        if c["tied"]:
            self.lm_head.weight = self.embed.weight
        hd = c["hidden"] // c["heads"]
        self.inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids):
        t = ids.shape[1]
        freqs = torch.outer(torch.arange(t).float(), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        mask = torch.full((t, t), float("-inf")).triu(1)
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.norm(x))


def hf_model(c):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=c["vocab"], hidden_size=c["hidden"], intermediate_size=c["inter"],
        num_hidden_layers=c["layers"], num_attention_heads=c["heads"], num_key_value_heads=c["kv"],
        tie_word_embeddings=c["tied"], max_position_embeddings=1024, rms_norm_eps=1e-6,
        use_sliding_window=False, torch_dtype="float32",
    )
    return Qwen2ForCausalLM(cfg)


# --- workloads ------------------------------------------------------------------------------


def train(c, impl, iters, warmup):
    model = PlainQwen2(c) if impl == "plain" else hf_model(c)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step():
        seq = torch.randint(0, c["vocab"], (BATCH, TRAIN_LEN + 1), generator=gen)
        logits = model(seq[:, :-1])
        logits = logits if impl == "plain" else logits.logits
        loss = F.cross_entropy(logits.reshape(-1, c["vocab"]), seq[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    seconds = time.perf_counter() - start
    tokens = BATCH * TRAIN_LEN * iters
    return tokens, seconds, 3.0 * tokens * forward_flops_per_token(c, TRAIN_LEN)


def rollout(c, iters, warmup):
    model = hf_model(c).eval()
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, c["vocab"], (BATCH, PROMPT_LEN), generator=gen)
    mask = torch.ones_like(prompts)

    def run():
        with torch.inference_mode():
            out = model.generate(
                input_ids=prompts, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                top_p=1.0, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, use_cache=True,
                pad_token_id=0, eos_token_id=None,
            )
        return out.shape[1] - PROMPT_LEN

    for _ in range(warmup):
        run()
    start = time.perf_counter()
    tokens = sum(BATCH * run() for _ in range(iters))
    seconds = time.perf_counter() - start
    prefill = PROMPT_LEN * forward_flops_per_token(c, PROMPT_LEN)
    decode = sum(forward_flops_per_token(c, PROMPT_LEN + k) for k in range(1, NEW_TOKENS))
    return tokens, seconds, BATCH * iters * (prefill + decode)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("workload", choices=["train", "rollout"])
    ap.add_argument("--config", choices=["A", "B"], default="A")
    ap.add_argument("--impl", choices=["plain", "hf"], default="hf", help="training implementation")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(physical_cores())
    c = CONFIGS[args.config]
    iters = args.iters or (5 if args.config == "A" else 2)
    if args.workload == "train":
        tokens, seconds, flops = train(c, args.impl, iters, args.warmup)
        impl = args.impl
    else:
        tokens, seconds, flops = rollout(c, iters, args.warmup)
        impl = "hf-generate"
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result = dict(workload=args.workload, config=args.config, impl=impl, tokens_per_s=tokens / seconds,
                  gflops=flops / seconds / 1e9, peak_rss_mb=rss_mb, seconds=seconds, tokens=tokens,
                  torch=torch.__version__, threads=torch.get_num_threads())
    print(f"{args.workload} {args.config} ({impl}): {tokens / seconds:.0f} tokens/s, "
          f"{flops / seconds / 1e9:.1f} GFLOP/s, peak RSS {rss_mb:.0f} MB")
    print("BENCH " + json.dumps(result))


if __name__ == "__main__":
    main()
