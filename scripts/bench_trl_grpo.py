#!/usr/bin/env python3
"""Reference GRPO benchmark: TRL's GRPOTrainer on CPU at the settings of `ponder bench train`,
printing the same line format so that scripts/bench_compare.sh can parse both.

    .venv/bin/python scripts/bench_trl_grpo.py --model runs/bench-model [--steps 5] [--threads 2]

Settings mirrored from ponder's bench (trainer/src/bench.rs): fp32 (bf16 off; --dtype bf16
turns TRL's bf16 mixed precision on, against `ponder bench train --dtype bf16`), CPU, 8 prompts
x num_generations 8 = 64 completions per step, one optimizer step per generation batch
(per_device_train_batch_size 64, gradient_accumulation_steps 1 by default), exactly 128 new
tokens per completion (EOS suppressed with generation_kwargs min_new_tokens), temperature 1,
top_k 0, top_p 1, beta 0.04 (reference model in use), loss_type "dapo", epsilon 0.2,
num_iterations 1, AdamW lr 1e-5 (constant schedule), max_grad_norm 1, no gradient
checkpointing, no vLLM; reward = share of digit characters among the completion's
non-whitespace characters (ponder's `char_fraction`); prompts "What is i + (i+7)?" as plain
text (no chat template). One warm-up step, then `--steps` timed steps (on_step_begin ->
on_step_end, which covers generation, rewards, reference/policy forward, backward, clip and
AdamW); the median is reported. Packages: scripts/requirements-bench.txt.

With --stop-rate P (as `ponder bench train --stop-rate`), the last ceil(P * vocab) token ids
also end a completion (generation_kwargs eos_token_id) and EOS is not suppressed, so
completion lengths vary as in real rollouts. TRL masks each completion after its first
tokenizer EOS; generate pads finished rows with the pad id, which is the EOS id on the
benchmark model, so a completion ends one token after its stop token.
"""

import argparse
import os
import resource
import statistics
import sys
import time
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from transformers.trainer_callback import PrinterCallback, ProgressCallback  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402


def peak_rss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def digit_fraction(completions, **kwargs):
    """Share of digit characters among the non-whitespace characters; 0 for an empty one."""
    out = []
    for c in completions:
        chars = [ch for ch in c if not ch.isspace()]
        out.append(sum(ch in "0123456789" for ch in chars) / len(chars) if chars else 0.0)
    return out


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times = []
        self._t = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--micro-batch", type=int, default=0,
                    help="per_device_train_batch_size (0 = the whole 64-completion batch at once); "
                         "gradient accumulation makes up the rest, still one optimizer step per generation")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stop-rate", type=float, default=0.0, help="fraction of the vocabulary that ends a completion (0 = fixed length)")
    ap.add_argument("--verbose", action="store_true", help="show TRL's per-step logs")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32",
                    help="bf16: GRPOConfig(bf16=True), TRL's mixed precision (fp32 weights and AdamW, bf16 autocast), as a TRL user runs it")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="GRPOConfig(gradient_checkpointing=True): transformers recomputes each layer in the backward")
    a = ap.parse_args()

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if not a.verbose:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        warnings.filterwarnings("ignore")

    completions = a.prompts * a.group_size
    micro = a.micro_batch or completions
    if completions % micro:
        sys.exit(f"--micro-batch {micro} must divide {completions} completions per step")
    accum = completions // micro

    rss_after_imports = peak_rss_mib()
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    n_prompts = max(1, a.prompts) * 4
    ds = Dataset.from_list([{"prompt": f"What is {i} + {i + 7}?"} for i in range(n_prompts)])

    import tempfile

    if a.stop_rate > 0:
        vocab = model.config.vocab_size
        eos = model.generation_config.eos_token_id
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        n = min(vocab - 1, -int(-a.stop_rate * vocab // 1))
        gen_kwargs = {"eos_token_id": eos + [t for t in range(vocab - n, vocab) if t not in eos]}
    else:
        gen_kwargs = {"min_new_tokens": a.new_tokens}  # EOS suppressed: exactly N tokens

    out_dir = tempfile.mkdtemp(prefix="bench-trl-")
    cfg = GRPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        bf16=a.dtype == "bf16",
        fp16=False,
        seed=a.seed,
        max_steps=a.steps + 1,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
        num_generations=a.group_size,
        max_completion_length=a.new_tokens,
        generation_kwargs=gen_kwargs,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        beta=a.beta,
        loss_type="dapo",
        epsilon=0.2,
        num_iterations=1,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        gradient_checkpointing=a.gradient_checkpointing,
        use_vllm=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=not a.verbose,
        dataloader_num_workers=0,
        log_completions=False,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=digit_fraction,
        args=cfg,
        train_dataset=ds,
        processing_class=tok,
        callbacks=[timer],
    )
    if not a.verbose:  # logging_steps=1 still records every step in trainer.state.log_history
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    try:
        trainer.train()
    finally:
        import shutil

        shutil.rmtree(out_dir, ignore_errors=True)
    # The Trainer turns checkpointing on when training starts.
    assert getattr(trainer.model, "is_gradient_checkpointing", False) == a.gradient_checkpointing, "gradient checkpointing is not as asked"

    logs = [h for h in trainer.state.log_history if "loss" in h]
    if logs:
        last = logs[-1]
        lens = last.get("completions/mean_length", last.get("completion_length"))
        if a.stop_rate > 0 and lens is not None:
            max_len = statistics.median(h.get("completions/max_length", float("nan")) for h in logs[1:] or logs)
            print(f"  completion length: mean {statistics.median(h.get('completions/mean_length', float('nan')) for h in logs[1:] or logs):.1f}, max {max_len:.0f} (stop rate {a.stop_rate})")
        elif lens is not None and abs(lens - a.new_tokens) > 1e-6:
            print(f"warning: mean completion length {lens}, expected {a.new_tokens}", file=sys.stderr)
    times = timer.times[1:] or timer.times
    step_s = statistics.median(times)
    tokens = completions * a.new_tokens
    if a.stop_rate > 0 and logs:
        tokens = completions * statistics.median(h.get("completions/mean_length", a.new_tokens) for h in logs[1:] or logs)
    params = sum(p.numel() for p in model.parameters())
    import transformers
    import trl

    print(
        f"bench train (trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}): "
        f"{a.model} ({params / 1e6:.2f}M params), {a.prompts} prompts x G={a.group_size} x {a.new_tokens} new tokens, "
        f"beta {a.beta}, dapo, micro-batch {micro} x accum {accum}, dtype {a.dtype}, device cpu, threads {torch.get_num_threads()}"
    )
    print("  steps (s): " + " ".join(f"{t:.3f}" for t in times))
    print(f"  seconds per step (median): {step_s:.3f}  ({1 / step_s:.3f} steps/s)")
    print(f"  completion tokens/s (whole step): {tokens / step_s:.0f}")
    if logs and a.verbose:
        for h in logs:
            print("  log:", {k: h[k] for k in sorted(h) if k.startswith(("loss", "reward", "kl", "completions/mean_length", "clip_ratio/region"))})
    print(f"  peak memory (RSS): {peak_rss_mib():.0f} MiB  (RSS after imports: {rss_after_imports:.0f} MiB)")


if __name__ == "__main__":
    main()
