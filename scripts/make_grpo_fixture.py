"""GRPO advantage and loss reference values, computed with NumPy straight from the
published formulas (DeepSeekMath GRPO, DAPO, Dr. GRPO; TRL's aggregation), independent of
ponder's Rust code. Writes trainer/tests/fixtures/grpo_loss.json.

Run:  .venv/bin/python scripts/make_grpo_fixture.py   (needs only numpy)
"""
import json
import os

import numpy as np

rng = np.random.default_rng(1234)
G, NPROMPT, T, MAX_NEW = 4, 3, 7, 9
B = G * NPROMPT
EPS = 1e-4

rewards = rng.integers(0, 3, size=B).astype(np.float64) / 2.0
rewards[G:2 * G] = 0.5  # one group with zero variance: its advantages must be exactly 0

def advantages(r, scale):
    g = r.reshape(NPROMPT, G)
    mean = g.mean(axis=1, keepdims=True)
    if scale == "group":
        std = g.std(axis=1, ddof=1, keepdims=True)
    elif scale == "batch":
        std = np.full_like(mean, r.std(ddof=1))
    else:
        return (g - mean).reshape(-1)
    return ((g - mean) / (std + EPS)).reshape(-1)

lengths = rng.integers(1, T + 1, size=B)
mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float64)
old = -rng.uniform(0.1, 3.0, size=(B, T))
# Ratios spread well beyond both clip edges.
logp = old + rng.normal(0.0, 0.35, size=(B, T))
ref = old + rng.normal(0.0, 0.2, size=(B, T))

cases = []
for scale in ["group", "batch", "none"]:
    adv = advantages(rewards, scale)
    for eps_low, eps_high in [(0.2, 0.2), (0.2, 0.28)]:
        for beta in [0.0, 0.04]:
            ratio = np.exp(logp - old)
            a = adv[:, None]
            per_token = -np.minimum(ratio * a, np.clip(ratio, 1 - eps_low, 1 + eps_high) * a)
            kl = np.exp(ref - logp) - (ref - logp) - 1.0
            if beta != 0.0:
                per_token = per_token + beta * kl
            losses = {
                "grpo": float(np.mean((per_token * mask).sum(1) / np.maximum(mask.sum(1), 1))),
                "bnpo": float((per_token * mask).sum() / max(mask.sum(), 1)),
                "dapo": float((per_token * mask).sum() / max(mask.sum(), 1)),
                "dr_grpo": float((per_token * mask).sum() / (B * MAX_NEW)),
            }
            low = (ratio < 1 - eps_low) & (a < 0)
            high = (ratio > 1 + eps_high) & (a > 0)
            cases.append({
                "scale_rewards": scale, "epsilon": eps_low, "epsilon_high": eps_high, "beta": beta,
                "advantages": adv.tolist(), "loss": losses,
                "kl_mean": float((kl * mask).sum() / mask.sum()),
                "clip_low": float((low * mask).sum() / mask.sum()),
                "clip_high": float((high * mask).sum() / mask.sum()),
            })

out = {
    "group_size": G, "max_new_tokens": MAX_NEW, "eps": EPS,
    "rewards": rewards.tolist(), "mask": mask.tolist(),
    "logp": logp.tolist(), "old": old.tolist(), "ref": ref.tolist(), "cases": cases,
}
path = os.path.join(os.path.dirname(__file__), "..", "trainer", "tests", "fixtures", "grpo_loss.json")
with open(path, "w") as f:
    json.dump(out, f)
print("wrote", os.path.normpath(path), len(cases), "cases")
