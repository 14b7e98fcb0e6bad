#!/usr/bin/env python3
"""Markdown table of a pipeline's evaluations over several runs (seeds): mean and spread.

    scripts/pipeline_table.py runs/tiny-r1-s0 runs/tiny-r1-s1 runs/tiny-r1-s2 [--task addition] [--direct compare]

For every `eval/<stage>.json` (in pipeline order) it prints held-out accuracy, format rate,
language-consistency rate, mean completion length of `--task`, the accuracy of the
`--direct` task, and the pipeline's cumulative wall time up to that evaluation (from
`pipeline.json`). Cells are `mean (min-max)` over the runs; a single run prints its value.
Only the standard library is used.
"""
import argparse
import json
import os
import sys


def load(run):
    with open(os.path.join(run, "pipeline.json")) as f:
        state = json.load(f)
    order = [name for name, _ in state["completed"]]
    seconds = state.get("seconds", {})
    evals = {}
    for name in order:
        p = os.path.join(run, "eval", name + ".json")
        if os.path.exists(p):
            with open(p) as f:
                evals[name] = json.load(f)
    cum, t = {}, 0.0
    for name in order:
        t += seconds.get(name, 0.0)
        cum[name] = t
    return order, evals, cum


def cell(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return fmt.format(mean)
    return (fmt + " ({}-{})").format(mean, fmt.format(min(values)), fmt.format(max(values)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--task", default="addition")
    ap.add_argument("--direct", default="compare")
    a = ap.parse_args()
    loaded = [load(r) for r in a.runs]
    order = loaded[0][0]
    print(f"| evaluation | {a.task} accuracy | format | language consistency | length (tokens) | {a.direct} accuracy | wall time (min, cumulative) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in order:
        reps = [ev.get(name) for _, ev, _ in loaded]
        if any(r is None for r in reps):
            continue
        def task(r, key, t=a.task):
            tr = r.get("tasks", {}).get(t)
            if tr is None:
                return r.get(key) if t == a.task else None
            return tr.get(key)
        row = [
            cell([task(r, "accuracy") for r in reps], "{:.3f}"),
            cell([task(r, "format_rate") for r in reps], "{:.3f}"),
            cell([task(r, "language_consistency_rate") for r in reps], "{:.3f}"),
            cell([task(r, "mean_completion_tokens") for r in reps], "{:.1f}"),
            cell([task(r, "accuracy", a.direct) for r in reps], "{:.3f}"),
            cell([cum[name] / 60 for _, _, cum in loaded], "{:.1f}"),
        ]
        print(f"| {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    sys.exit(main())
