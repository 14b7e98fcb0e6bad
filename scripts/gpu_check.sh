#!/usr/bin/env bash
# The GPU check: on a CUDA machine, in a few minutes (after the build), prints
#   1. the transformers-parity tests run on CUDA (fp32 within 1e-4, bf16/f16 within 5 % of
#      the largest logit),
#   2. a GRPO step at Qwen2.5-0.5B's shape (random weights, vocabulary 151,936, bf16):
#      s/step, tokens/s and peak GPU memory (sampled from nvidia-smi every 0.2 s),
#   3. generation at the same shape: tokens/s.
# It fails loudly, never skips, when CUDA is missing. CI (CPU) does not run it.
#
#   scripts/gpu_check.sh [cuda:N]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dev="${1:-cuda}"
die() { echo "gpu_check: $*" >&2; exit 1; }

command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this is not a CUDA machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || die "nvidia-smi failed"
scripts/setup-libtorch.sh
cargo build --release -q
ponder=target/release/ponder

echo "== 1. parity with transformers on $dev"
PONDER_TEST_DEVICE="$dev" cargo test --release -q -p rollout --test parity -- \
    logits_match_transformers_fp32 left_padded_batch_forward_matches_reference \
    greedy_generation_matches_transformers bf16_and_f16_run_and_stay_close \
    || die "parity on $dev failed"

work="$(mktemp -d)"
trap 'kill "${smi:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
echo "== 2. a model of Qwen2.5-0.5B's shape (random weights)"
$ponder init-model --out "$work/q05" --hidden 896 --layers 24 --heads 14 --kv-heads 2 \
    --intermediate 4864 --vocab-size 151936 --seed 0

# Peak GPU memory of the whole check from here on (nvidia-smi samples; libtorch's
# caching allocator holds what it reserved, so this is reserved, not live, memory).
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$work/mem.txt" &
smi=$!
peak() { sort -n "$work/mem.txt" | tail -n 1; }

echo "== 3. GRPO step, bf16, 8 prompts x 8 samples x 128 tokens"
$ponder bench train --model "$work/q05" --device "$dev" --dtype bf16 \
    --prompts 8 --group-size 8 --new-tokens 128 --steps 3 || die "bench train failed"
echo "  peak GPU memory so far: $(peak) MiB"

echo "== 4. generation, bf16, 64 x 128"
$ponder bench generate --model "$work/q05" --device "$dev" --dtype bf16 \
    --batch 64 --new-tokens 128 --repeats 3 || die "bench generate failed"
echo "  peak GPU memory of the check: $(peak) MiB"
echo "gpu_check: done"
