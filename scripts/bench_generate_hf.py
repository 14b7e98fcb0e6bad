#!/usr/bin/env python3
"""Reference generation benchmark: Hugging Face transformers `generate` on the same model and
settings as `ponder bench generate`, printing the same line format so that
scripts/bench_compare.sh can parse both.

    .venv/bin/python scripts/bench_generate_hf.py --model runs/bench-model \
        --batch 64 --new-tokens 128 [--greedy] [--repeats 3] [--threads 2]

Settings mirrored from ponder: fp32 on CPU, KV cache, prompts of 16 fixed pseudo-random token
ids per row (the same ids ponder uses: (i*31 + j*17) % (vocab-1) + 1, EOS ids dropped),
left-padded with an attention mask; sampling at temperature 1 (top_k 0, top_p 1) or greedy;
EOS suppressed via min_new_tokens = max_new_tokens, so every row gets exactly N new tokens.
With --stop-rate P (as ponder's), the last ceil(P * vocab) token ids also count as EOS and
nothing is suppressed: lengths vary as in real rollouts, and tokens/s counts each row's
tokens up to and including its EOS.
One warm-up run, then `--repeats` timed runs; the median is reported.
Packages: scripts/requirements-bench.txt.
"""

import argparse
import resource
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM, GenerationConfig
from transformers.utils import logging as hf_logging


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def make_prompts(batch, prompt_len, vocab, eos_ids):
    # Same ids as ponder's bench (trainer/src/bench.rs), EOS ids filtered out.
    return [
        [t for t in (((i * 31 + j * 17) % (vocab - 1)) + 1 for j in range(prompt_len)) if t not in eos_ids]
        for i in range(batch)
    ]


def left_pad(rows, pad_id):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--greedy", action="store_true")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stop-rate", type=float, default=0.0, help="fraction of the vocabulary that ends a row (0 = fixed length)")
    a = ap.parse_args()

    hf_logging.disable_progress_bar()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    rss_after_imports = peak_rss_mib()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    cfg = model.config
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = cfg.eos_token_id
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    pad_id = model.generation_config.pad_token_id
    if pad_id is None:
        pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)

    prompts = make_prompts(a.batch, a.prompt_len, cfg.vocab_size, set(eos_ids))
    if a.stop_rate > 0:
        n = min(cfg.vocab_size - 1, -int(-a.stop_rate * cfg.vocab_size // 1))
        eos_ids += [t for t in range(cfg.vocab_size - n, cfg.vocab_size) if t not in eos_ids]
    input_ids, attention_mask = left_pad(prompts, pad_id)

    gen_cfg = GenerationConfig(
        max_new_tokens=a.new_tokens,
        # suppresses EOS until N tokens: exactly N new tokens per row (unless --stop-rate)
        min_new_tokens=0 if a.stop_rate > 0 else a.new_tokens,
        do_sample=not a.greedy,
        temperature=1.0 if not a.greedy else None,
        top_k=0 if not a.greedy else None,
        top_p=1.0 if not a.greedy else None,
        use_cache=True,
        eos_token_id=eos_ids or None,
        pad_token_id=pad_id,
    )

    def run_once():
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=gen_cfg)
        s = time.perf_counter() - t
        new = out[:, input_ids.shape[1]:].tolist()
        # Each row's tokens up to and including its first EOS (rows are padded after it).
        lens = [next((j + 1 for j, t in enumerate(r) if t in eos_ids), len(r)) for r in new]
        return s, lens

    run_once()  # warm-up
    times, lens = [], []
    for _ in range(max(1, a.repeats)):
        s, lens = run_once()
        times.append(s)
    tokens = sum(lens)
    if a.stop_rate == 0 and tokens != a.batch * a.new_tokens:
        print(f"warning: generated {tokens} tokens, expected {a.batch * a.new_tokens}", file=sys.stderr)
    secs = statistics.median(times)

    params = sum(p.numel() for p in model.parameters())
    print(
        f"bench generate (transformers {__import__('transformers').__version__}, torch {torch.__version__}): "
        f"model {a.model} ({params / 1e6:.2f}M params), {a.batch} x {a.new_tokens} new tokens, "
        f"{'greedy' if a.greedy else 'sampling T=1'}, dtype f32, device cpu, threads {torch.get_num_threads()}"
    )
    print("  runs (s): " + " ".join(f"{t:.3f}" for t in times))
    print(f"  tokens/s (median): {tokens / secs:.0f}")
    if a.stop_rate > 0:
        print(f"  completion length: mean {tokens / len(lens):.1f}, max {max(lens)} (stop rate {a.stop_rate})")
    print(f"  ms per decode step: {1000 * secs / max(lens):.2f}")
    print(f"  peak memory (RSS): {peak_rss_mib():.0f} MiB  (RSS after imports: {rss_after_imports:.0f} MiB)")


if __name__ == "__main__":
    main()
