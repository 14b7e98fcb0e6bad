#!/usr/bin/env python3
"""README table of recipes/tiny-r1-distill.toml over several runs (seeds): mean and spread.

    scripts/distill_table.py runs/tiny-r1-distill runs/tiny-r1-distill-s1 runs/tiny-r1-distill-s2

Each run folder needs the log of its `ponder train` next to it (`runs/<name>.log`, the
stderr of the run) for wall times ("stage X took N s"). For the teacher and each student it
prints held-out accuracy, format rate, language-consistency rate and mean completion length
(from `eval/eval-*.json`), the wall time of the method's stages and their FLOPs:

  forward of N parameters over t tokens = 2 N t, forward + backward = 6 N t (attention's
  context term and the pretraining of the shared base left out);
  rl:        per GRPO step, sampling + reference + learner = (2 + 2 + 6) N_s x num_tokens
             (num_tokens = the step's prompt + completion tokens);
  sft:       the teacher's rejection sampling, 2 N_t x (prompt + completion tokens of every
             sample; prompt tokens per prompt taken from the GRPO stage, which uses the same
             prompts), plus the distill stage's flops/total (6 N_s x trained tokens);
  kd:        the traces' rejection sampling (as sft) plus the distill stage's flops/total
             (the teacher's cache pass + training);
  on-policy: the distill stage's flops/total (student sampling + teacher scoring + training).
Cells are `mean (min-max)` over the runs. Only the standard library is used.
"""
import json
import os
import re
import sys
import tomllib

from pipeline_table import cell  # mean (min-max) over runs, one definition for both tables

ROWS = [("teacher", "eval-teacher", []), ("student base", "eval-student-base", []),
        ("1. RL only (GRPO)", "eval-rl", ["rl"]), ("2. SFT on teacher traces", "eval-sft", ["teacher-traces", "sft"]),
        ("3. KD (forward KL, top-20 cache)", "eval-kd", ["teacher-traces", "kd"]), ("4. on-policy (reverse KL)", "eval-on-policy", ["on-policy"])]


def jload(p):
    with open(p) as f:
        return json.load(f)


def lines(p):
    with open(p) as f:
        return [json.loads(l) for l in f if l.strip()]


def params(model_dir):
    c = jload(os.path.join(model_dir, "config.json"))
    h, i, l, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    hd = c.get("head_dim", h // c["num_attention_heads"])
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    bias = (q + 2 * kv) if c["model_type"] == "qwen2" else 0
    layer = h * q + 2 * h * kv + q * h + bias + 3 * h * i + 2 * h
    return v * h * (1 if c.get("tie_word_embeddings") else 2) + l * layer + h


def run_figures(run):
    name = os.path.basename(os.path.normpath(run))
    log = os.path.join(os.path.dirname(os.path.normpath(run)), name + ".log")
    took = {}
    if os.path.exists(log):
        for m in re.finditer(r"stage (\S+) took ([0-9.]+)s", open(log).read()):
            took[m.group(1)] = took.get(m.group(1), 0.0) + float(m.group(2))
    st = os.path.join(run, "stages")
    n_s = params(os.path.join(st, "student-base", "model"))
    n_t = jload(os.path.join(st, "kd", "summary.json"))["teacher_parameters"]
    flops = {}
    rl = [r for r in lines(os.path.join(st, "rl", "metrics.jsonl")) if "num_tokens" in r]
    # Prompt tokens per training prompt (the same prompts file for every method): a GRPO
    # step's tokens less its completions, per row.
    with open(os.path.join(run, "config.toml"), "rb") as f:
        cfg = tomllib.load(f)
    ro = [s for s in cfg["stages"] if s["name"] == "rl"][0]["rollout"]
    rows = ro["group_size"] * ro["prompts_per_step"]
    mean_prompt = sum(r["num_tokens"] / rows - r["completions/mean_length"] for r in rl) / len(rl)
    flops["rl"] = sum(10 * n_s * r["num_tokens"] for r in rl)
    rs_tokens = 0
    shards = os.path.join(st, "teacher-traces", "shards")
    for f in sorted(os.listdir(shards)):
        for r in lines(os.path.join(shards, f)):
            rs_tokens += mean_prompt + r["completion_tokens"]
    last = lambda s: [r for r in lines(os.path.join(st, s, "metrics.jsonl")) if "flops/total" in r][-1]["flops/total"]
    flops["sft"] = 2 * n_t * rs_tokens + last("sft")
    flops["kd"] = 2 * n_t * rs_tokens + last("kd")
    flops["on-policy"] = last("on-policy")
    # Held-out accuracy inside the stages (200 prompts, one sample each) at a third, two
    # thirds and all of the budget: GRPO steps 40 / 80 / 120, distill steps 80 / 160 / 240.
    curve = {}
    for stage, key, steps in [("rl", "eval/rewards/accuracy/mean", [40, 80, 120])] + [(s, "eval/accuracy", [80, 160, 240]) for s in ["sft", "kd", "on-policy"]]:
        got = {r["step"]: r[key] for r in lines(os.path.join(st, stage, "metrics.jsonl")) if key in r}
        curve[stage] = [got.get(x) for x in steps]
    evals = {}
    for _, ev, _ in ROWS:
        p = os.path.join(run, "eval", ev + ".json")
        if os.path.exists(p):
            r = jload(p)
            evals[ev] = r.get("tasks", {}).get("addition", r)
    return evals, took, flops, curve


def main():
    runs = sys.argv[1:]
    if not runs:
        print(__doc__)
        return 2
    figs = [run_figures(r) for r in runs]
    print(f"| model | held-out accuracy | format | language consistency | length (tokens) | wall time (min) | training FLOPs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, ev, stages in ROWS:
        reps = [f[0].get(ev) for f in figs]
        if any(r is None for r in reps):
            continue
        key = stages[-1] if stages else None
        wall = [sum(f[1].get(s, 0.0) for s in stages) / 60 for f in figs] if stages else [None]
        fl = [f[2].get(key) for f in figs] if key else [None]
        row = [
            cell([r["accuracy"] for r in reps], "{:.3f}"),
            cell([r.get("format_rate") for r in reps], "{:.3f}"),
            cell([r.get("language_consistency_rate") for r in reps], "{:.3f}"),
            cell([r["mean_completion_tokens"] for r in reps], "{:.1f}"),
            cell(wall, "{:.1f}"),
            cell([x / 1e12 if x is not None else None for x in fl], "{:.2f}T"),
        ]
        print(f"| {label} | " + " | ".join(row) + " |")
    print()
    print("| held-out accuracy after ... of the 7,680 training sequences | 1/3 | 2/3 | all |")
    print("|---|---:|---:|---:|")
    for label, _, stages in ROWS[2:]:
        key = stages[-1]
        print(f"| {label} | " + " | ".join(cell([f[3][key][i] for f in figs], "{:.3f}") for i in range(3)) + " |")


if __name__ == "__main__":
    sys.exit(main())
