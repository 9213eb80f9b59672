"""Checks that `transformers` loads directories written by aha's `save_pretrained` with identical logits.

Usage: roundtrip_check.py tiny SAVED_DIR FIXTURE_DIR   (compare with FIXTURE_DIR/reference.safetensors)
       roundtrip_check.py smollm2 SAVED_DIR REFERENCE_JSON
Prints the max |Δlogit| and exits 1 above the bound (1e-4 for tiny, 1e-3 for SmolLM2, see
crates/model/tests/smollm2_gguf.rs for why).
"""

import json
import sys

import torch
import transformers
from safetensors.torch import load_file


def tiny(saved, fixture):
    ref = load_file(f"{fixture}/reference.safetensors")
    model = transformers.AutoModelForCausalLM.from_pretrained(saved, attn_implementation="eager", dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"],
                       position_ids=ref["position_ids"]).logits
    real = ref["attention_mask"].bool()
    diff = (logits[real] - ref["logits"][real]).abs().max().item()
    tok = transformers.AutoTokenizer.from_pretrained(saved)
    text = tok.apply_chat_template([{"role": "user", "content": "hi <think>"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi <think><|im_end|>\n<|im_start|>assistant\n", repr(text)
    return diff, 1e-4


def smollm2(saved, reference):
    ref = json.load(open(reference))
    model = transformers.AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(saved)
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == ref["prompt_text"], repr(text)
    assert tok(text, add_special_tokens=False)["input_ids"] == ref["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ref["input_ids"]])).logits[0]
    top = torch.tensor(ref["last_top50"]["ids"])
    diff = (logits[-1, top] - torch.tensor(ref["last_top50"]["logits_f32"])).abs().max().item()
    cols = torch.tensor(ref["probe_ids"])
    for k, p in enumerate(ref["probe_positions"]):
        diff = max(diff, (logits[p, cols] - torch.tensor(ref["probe_logits_f32"][k])).abs().max().item())
    return diff, 1e-3


def main():
    kind, saved, ref = sys.argv[1:4]
    diff, bound = {"tiny": tiny, "smollm2": smollm2}[kind](saved, ref)
    print(f"{kind} {saved}: transformers on aha's saved output, max |Δlogit| = {diff:.3e} (bound {bound:g})")
    sys.exit(0 if diff <= bound else 1)


if __name__ == "__main__":
    main()
