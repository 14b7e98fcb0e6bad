#!/usr/bin/env python3
"""Times, in isolation, the matmuls of one decode step of the benchmark model at batch 64
(hidden 256, q/k/v fused 384, gate/up fused 1376, down 688 -> 256, lm_head 1024 ids
padded), with libtorch's own kernels: the floor under any decode step that runs them.

    .venv/bin/python scripts/bench_decode_matmuls.py [--threads 2] [--batch 64]

Prints each shape's time and GFLOP/s and the sum for one step (4 layers + lm_head).
"""

import argparse
import time

import torch


def bench(f, n=300):
    for _ in range(20):
        f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m = a.batch
    # (in, out, per step): qkv, o, gate_up, down per layer; lm_head once.
    shapes = [(256, 384, a.layers), (256, 256, a.layers), (256, 1376, a.layers), (688, 256, a.layers), (256, 1024, 1)]
    total = 0.0
    for k, n, count in shapes:
        x, w = torch.randn(m, k), torch.randn(n, k)
        us = bench(lambda: torch.nn.functional.linear(x, w))
        total += us * count
        print(f"{m}x{k} @ {k}x{n}: {us:.0f} us ({2 * m * k * n / us / 1e3:.0f} GFLOP/s), {count} per step")
    print(f"matmuls of one decode step: {total / 1e3:.2f} ms")


if __name__ == "__main__":
    main()
