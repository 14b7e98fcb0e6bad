#!/usr/bin/env bash
# The GPU check: on a CUDA machine, in a few minutes (after the build), prints
#   1. the transformers-parity tests run on CUDA (fp32 within 1e-4, bf16/f16 within 5 % of
#      the largest logit),
#   2. a GRPO step at Qwen2.5-0.5B's shape (random weights, vocabulary 151,936, bf16):
#      s/step, tokens/s and peak GPU memory (sampled from nvidia-smi every 0.2 s),
#      and the same step with activation checkpointing and LM-head chunks of 64 positions,
#   3. generation at the same shape: tokens/s,
#   4. a short pipeline with every stage kind on the GPU (bf16 SFT / GRPO / sampling /
#      evaluation, fp32 distillation): stage times.
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

# The peak of the samples taken since mark's line count (one benchmark's own peak).
mark() { wc -l < "$work/mem.txt"; }
peak_since() { tail -n +"$(( $1 + 1 ))" "$work/mem.txt" | sort -n | tail -n 1; }

echo "== 3. GRPO step, bf16, 8 prompts x 8 samples x 128 tokens"
m=$(mark)
$ponder bench train --model "$work/q05" --device "$dev" --dtype bf16 \
    --prompts 8 --group-size 8 --new-tokens 128 --steps 3 || die "bench train failed"
sleep 0.5
echo "  peak GPU memory of this step benchmark: $(peak_since "$m") MiB"

echo "== 3b. the same with activation checkpointing and LM-head chunks of 64 positions"
m=$(mark)
$ponder bench train --model "$work/q05" --device "$dev" --dtype bf16 \
    --prompts 8 --group-size 8 --new-tokens 128 --steps 3 \
    --gradient-checkpointing --logprob-chunk 64 || die "bench train (checkpointed) failed"
sleep 0.5
echo "  peak GPU memory of this step benchmark: $(peak_since "$m") MiB"

echo "== 4. generation, bf16, 64 x 128"
$ponder bench generate --model "$work/q05" --device "$dev" --dtype bf16 \
    --batch 64 --new-tokens 128 --repeats 3 || die "bench generate failed"
echo "  peak GPU memory so far: $(peak) MiB"

# Every pipeline stage kind on the GPU (pretraining stays on the CPU; it has no device
# key): SFT in bf16 with gradient accumulation, GRPO, rejection sampling and evaluation in
# bf16, on-policy distillation in fp32. A few seconds; it catches a tensor left on the CPU.
echo "== 5. a short R1 pipeline on $dev (tasks, pretrain, sft, grpo, rejection_sample, eval, distill)"
dev_key="$dev"
cat > "$work/pipeline.toml" <<TOML
[run]
name = "gpu-pipeline"
seed = 0
output_dir = "$work/runs"

[[stages]]
name = "data"
kind = "tasks"
task = "addition"
digits = 2
train_size = 400
heldout_size = 32
sft_size = 128

[[stages]]
name = "base"
kind = "pretrain"
task = "addition"
digits = 2
corpus_size = 400
[stages.model]
hidden = 128
layers = 2
heads = 4
kv_heads = 2
intermediate = 256
vocab = 400
[stages.train]
steps = 20
batch_size = 16

[[stages]]
name = "sft"
kind = "sft"
data = "{run}/data/sft.jsonl"
device = "$dev_key"
dtype = "bf16"
[stages.train]
steps = 10
batch_size = 16
micro_batch_size = 8
lr = 1e-3
warmup_steps = 1
log_every = 5

[[stages]]
name = "rl"
kind = "grpo"
[stages.model]
device = "$dev_key"
dtype = "bf16"
[stages.data]
train = "{run}/data/train.jsonl"
[stages.rollout]
group_size = 8
prompts_per_step = 8
max_new_tokens = 48
[[stages.rewards]]
kind = "accuracy"
[[stages.rewards]]
kind = "format"
[stages.grpo]
beta = 0.04
[stages.optim]
lr = 1e-4
[stages.train]
steps = 3

[[stages]]
name = "rs"
kind = "rejection_sample"
data = "{run}/data/train.jsonl"
limit = 32
samples = 4
device = "$dev_key"
dtype = "bf16"
[stages.sampling]
max_new_tokens = 48
[stages.filters]
drop_truncated = false

[[stages]]
name = "eval"
kind = "eval"
data = "{run}/data/heldout.jsonl"
samples = 4
device = "$dev_key"
dtype = "bf16"
[stages.sampling]
max_new_tokens = 48

[[stages]]
name = "distill"
kind = "distill"
method = "on_policy"
teacher = "{stages.rl.model}"
student = "{stages.sft.model}"
prompts = "{run}/data/train.jsonl"
limit = 32
device = "$dev_key"
[stages.sampling]
max_new_tokens = 48
[stages.train]
steps = 3
batch_size = 8
lr = 1e-4
log_every = 1
TOML
$ponder train "$work/pipeline.toml" --quiet || die "the pipeline on $dev failed"
python3 -c "import json,sys; s=json.load(open(sys.argv[1]))['seconds']; print('  ' + ', '.join(f'{k} {v:.1f}s' for k, v in s.items()))" \
    "$work/runs/gpu-pipeline/pipeline.json"
echo "  peak GPU memory of the check: $(peak) MiB"
echo "gpu_check: done"
