"""AdamW, gradient clipping and learning-rate schedule reference values, from the
implementations users compare against: torch.optim.AdamW, torch.nn.utils.clip_grad_norm_
and transformers' get_{constant,linear,cosine}_schedule_with_warmup. Independent of
ponder's Rust code. Writes trainer/tests/fixtures/optim.json.

Run:  .venv/bin/python scripts/make_optim_fixture.py   (scripts/requirements-fixtures.txt)
"""
import json
import os

import torch
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

torch.manual_seed(1234)

SCHEDULES = {
    "constant": get_constant_schedule_with_warmup,
    "linear": get_linear_schedule_with_warmup,
    "cosine": get_cosine_schedule_with_warmup,
}


def schedule_lrs(kind, lr, warmup, total):
    """The learning rate transformers' scheduler gives each optimizer step 0..total-1."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=lr)
    if kind == "constant":
        sched = SCHEDULES[kind](opt, num_warmup_steps=warmup)
    else:
        sched = SCHEDULES[kind](opt, num_warmup_steps=warmup, num_training_steps=total)
    out = []
    for _ in range(total):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


schedules = []
for kind in SCHEDULES:
    for warmup, total in [(0, 7), (3, 10), (4, 4)]:
        schedules.append({"schedule": kind, "lr": 3e-3, "warmup": warmup, "total": total, "lrs": schedule_lrs(kind, 3e-3, warmup, total)})


def adamw_case(lr, weight_decay, betas, eps, max_grad_norm, warmup, total, grad_scale):
    # A matrix (decayed) and a bias (not decayed: ponder decays only tensors of 2+ dims,
    # the usual split into two parameter groups).
    w = torch.nn.Parameter(torch.randn(3, 4))
    b = torch.nn.Parameter(torch.randn(4))
    init = {"w": w.detach().clone(), "b": b.detach().clone()}
    opt = torch.optim.AdamW(
        [{"params": [w], "weight_decay": weight_decay}, {"params": [b], "weight_decay": 0.0}],
        lr=lr, betas=betas, eps=eps,
    )
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=total)
    steps = []
    for s in range(total):
        # Some steps' gradients are far above the clip norm, some below it.
        scale = grad_scale if s % 2 == 0 else grad_scale / 50
        gw, gb = torch.randn(3, 4) * scale, torch.randn(4) * scale
        w.grad, b.grad = gw.clone(), gb.clone()
        norm = torch.nn.utils.clip_grad_norm_([w, b], max_grad_norm) if max_grad_norm > 0 else torch.sqrt(gw.square().sum() + gb.square().sum())
        used_lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        steps.append({
            "grad": {"w": gw.flatten().tolist(), "b": gb.tolist()},
            "grad_norm": float(norm),
            "lr": used_lr,
            "after": {"w": w.detach().flatten().tolist(), "b": b.detach().tolist()},
        })
    return {
        "lr": lr, "weight_decay": weight_decay, "betas": list(betas), "eps": eps,
        "max_grad_norm": max_grad_norm, "warmup": warmup, "total": total,
        "init": {"w": init["w"].flatten().tolist(), "b": init["b"].tolist()},
        "shapes": {"w": [3, 4], "b": [4]},
        "steps": steps,
    }


adamw = [
    adamw_case(1e-2, 0.1, (0.9, 0.95), 1e-8, 1.0, 2, 6, 3.0),
    adamw_case(3e-3, 0.0, (0.9, 0.999), 1e-6, 0.0, 0, 5, 1.0),
]

out = {
    "torch": torch.__version__,
    "transformers": __import__("transformers").__version__,
    "schedules": schedules,
    "adamw": adamw,
}
path = os.path.join(os.path.dirname(__file__), "..", "trainer", "tests", "fixtures", "optim.json")
with open(path, "w") as f:
    json.dump(out, f, indent=1)
print("wrote", os.path.normpath(path))
