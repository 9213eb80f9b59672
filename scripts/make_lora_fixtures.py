"""Makes the PEFT reference dumps of the model crate's LoRA tests (crates/model/tests/lora.rs),
under crates/model/tests/fixtures/lora/:

- peft-adapter/: an adapter made by Python `peft` on the tiny Llama fixture (r 4, alpha 8, q_proj,
  v_proj and down_proj, `init_lora_weights=False` so A and B are both random, seed 0);
- reference.safetensors: `input_ids` (2 x 7), and the logits `PeftModel` computes with that
  adapter (`peft_adapter_logits`) and with the adapter aha wrote (`aha-adapter/`, made by the
  test `aha_adapter_fixture_is_what_aha_writes` with AHA_WRITE_LORA_FIXTURE=1;
  `aha_adapter_logits`).

Run through scripts/make_lora_fixtures.sh (it makes the venv and the aha adapter first).
"""

import json
import pathlib

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "crates/model/tests/fixtures"
BASE = FIX / "tiny-llama"
OUT = FIX / "lora"
BASE_REL = "crates/model/tests/fixtures/tiny-llama"


def base_model():
    return AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32).eval()


def main():
    torch.manual_seed(0)
    ids = torch.tensor([[5, 9, 20, 3, 7, 100, 42], [17, 1, 250, 33, 8, 64, 2]], dtype=torch.int64)

    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    made = get_peft_model(base_model(), cfg).eval()
    out = OUT / "peft-adapter"
    made.save_pretrained(out)
    # A path inside the repository, not this machine's absolute one.
    conf_path = out / "adapter_config.json"
    conf = json.loads(conf_path.read_text())
    conf["base_model_name_or_path"] = BASE_REL
    conf_path.write_text(json.dumps(conf, indent=2) + "\n")
    with torch.no_grad():
        peft_logits = made(input_ids=ids).logits

    loaded = PeftModel.from_pretrained(base_model(), OUT / "aha-adapter").eval()
    with torch.no_grad():
        aha_logits = loaded(input_ids=ids).logits

    save_file(
        {
            "input_ids": ids,
            "peft_adapter_logits": peft_logits.contiguous(),
            "aha_adapter_logits": aha_logits.contiguous(),
        },
        str(OUT / "reference.safetensors"),
    )
    print(f"wrote {OUT}: peft adapter ({sorted(p.name for p in out.iterdir())}), reference dumps")


if __name__ == "__main__":
    main()
