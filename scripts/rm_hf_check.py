"""Checks that `transformers` loads a reward model written by `aha rm train` as a sequence classifier and
scores like aha: `AutoModelForSequenceClassification` on the same token ids, batched with right padding
(so `transformers`' own last-non-padding-token pooling is exercised), against `aha rm score`'s output.

Usage: rm_hf_check.py RM_DIR SCORED.jsonl   (rows with prompt+response+score, or prompt+chosen+rejected+
score_chosen+score_rejected). Prints the max |Δscore| and exits 1 above 1e-4.
"""

import json
import sys

import torch
import transformers


def encode(tok, template, eos, prompt, response):
    if template == "raw":
        text = prompt + response
    elif template == "chat":
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True) + response
    else:
        raise SystemExit(f"template {template} not handled by this check")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    while len(ids) > 1 and ids[-1] in eos:
        ids.pop()
    return ids


def main(rm_dir, scored):
    meta = json.load(open(f"{rm_dir}/reward_model.json"))
    tok = transformers.AutoTokenizer.from_pretrained(rm_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        rm_dir, attn_implementation="eager", dtype=torch.float32).eval()
    assert model.config.num_labels == 1, model.config.num_labels
    gen = json.load(open(f"{rm_dir}/generation_config.json")).get("eos_token_id", [])
    eos = set(gen if isinstance(gen, list) else [gen])
    pad = model.config.pad_token_id
    seqs, want = [], []
    for line in open(scored):
        r = json.loads(line)
        pairs = [("response", "score")] if "response" in r else [("chosen", "score_chosen"), ("rejected", "score_rejected")]
        for col, key in pairs:
            seqs.append(encode(tok, meta["template"], eos, r["prompt"], r[col]))
            want.append(r[key])
    worst = 0.0
    for i in range(0, len(seqs), 16):
        chunk = seqs[i:i + 16]
        t = max(len(s) for s in chunk)
        ids = torch.tensor([s + [pad] * (t - len(s)) for s in chunk])
        mask = torch.tensor([[1] * len(s) + [0] * (t - len(s)) for s in chunk])
        with torch.no_grad():
            got = model(input_ids=ids, attention_mask=mask).logits[:, 0]
        for g, w in zip(got.tolist(), want[i:i + 16]):
            worst = max(worst, abs(g - w))
    print(f"{rm_dir}: {len(seqs)} sequences, max |Δscore| = {worst:.3g} "
          f"({type(model).__name__}, pad {pad})")
    sys.exit(0 if worst <= 1e-4 else 1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
