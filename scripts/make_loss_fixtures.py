"""Dumps reference GRPO losses and gradients for crates/train/tests/loss_parity.rs.

A naive re-implementation of TRL's `GRPOTrainer._compute_loss` (TRL 0.2x / 1.x), term for term:
per-token or sequence-level (GSPO) importance ratio, clipping with epsilon_low / epsilon_high,
the k3 KL with beta, and the four aggregations grpo / bnpo / dr_grpo / dapo (including the
division by the gradient-accumulation steps and dapo's `num_items_in_batch` normaliser).
Everything runs in float64; the gradient is taken with respect to the policy log-probs.

Usage: python scripts/make_loss_fixtures.py OUT.json
"""

import json
import sys

import torch


def trl_loss(logps, old, ref, adv, mask, cfg):
    """TRL's `_compute_loss` after the log-probs are known (names follow TRL)."""
    log_ratio = logps - old
    if cfg["importance_sampling"] == "token":
        log_importance_weights = log_ratio
    else:
        log_importance_weights = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        log_importance_weights = log_importance_weights.unsqueeze(-1)
    coef_1 = torch.exp(log_importance_weights)
    coef_2 = torch.clamp(coef_1, 1 - cfg["epsilon_low"], 1 + cfg["epsilon_high"])
    per_token_loss1 = coef_1 * adv.unsqueeze(1)
    per_token_loss2 = coef_2 * adv.unsqueeze(1)
    per_token_loss = -torch.min(per_token_loss1, per_token_loss2)
    if cfg["beta"] != 0.0:
        per_token_kl = torch.exp(ref - logps) - (ref - logps) - 1
        per_token_loss = per_token_loss + cfg["beta"] * per_token_kl
    accum = cfg["grad_accum_steps"]
    lt = cfg["loss_type"]
    if lt == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accum
    elif lt == "bnpo":
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0) / accum
    elif lt == "dr_grpo":
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * cfg["max_completion_length"]) / accum
    elif lt == "dapo":
        loss = (per_token_loss * mask).sum() / cfg["dapo_active_tokens"]
    else:
        raise ValueError(lt)
    return loss


def make_case(gen, cfg):
    b = int(torch.randint(2, 4, (1,), generator=gen))
    length = int(torch.randint(3, 6, (1,), generator=gen))
    logps = -torch.rand(b, length, generator=gen, dtype=torch.float64) * 3 - 0.05
    # Log-ratios of a few tenths put many ratios outside [1 - eps_low, 1 + eps_high].
    old = logps + torch.randn(b, length, generator=gen, dtype=torch.float64) * 0.3
    ref = logps + torch.randn(b, length, generator=gen, dtype=torch.float64) * 0.5
    adv = torch.randn(b, generator=gen, dtype=torch.float64)
    mask = torch.ones(b, length, dtype=torch.float64)
    for i in range(b):
        keep = int(torch.randint(0, length + 1, (1,), generator=gen))
        mask[i, keep:] = 0.0
    cfg = dict(cfg)
    cfg["max_completion_length"] = length + 2
    cfg["dapo_active_tokens"] = float(mask.sum()) * cfg["grad_accum_steps"] + 3.0
    x = logps.clone().requires_grad_(True)
    loss = trl_loss(x, old, ref, adv, mask, cfg)
    loss.backward()
    return {
        "config": cfg,
        "logps": logps.tolist(),
        "old_logps": old.tolist(),
        "ref_logps": ref.tolist(),
        "advantages": adv.tolist(),
        "mask": mask.tolist(),
        "loss": float(loss.detach()),
        "grad": x.grad.tolist(),
    }


def main():
    out = sys.argv[1]
    gen = torch.Generator().manual_seed(20260126)
    cases = []
    for loss_type in ["grpo", "bnpo", "dr_grpo", "dapo"]:
        for level in ["token", "sequence"]:
            for beta in [0.0, 0.04]:
                for eps_low, eps_high in [(0.2, 0.2), (0.2, 0.28)]:
                    accum = 1 if len(cases) % 3 else 2
                    cfg = {
                        "loss_type": loss_type,
                        "importance_sampling": level,
                        "beta": beta,
                        "epsilon_low": eps_low,
                        "epsilon_high": eps_high,
                        "grad_accum_steps": accum,
                    }
                    cases.append(make_case(gen, cfg))
    with open(out, "w") as f:
        json.dump({"generator": "scripts/make_loss_fixtures.py", "torch": torch.__version__, "cases": cases}, f)
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
