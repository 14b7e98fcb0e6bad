#!/usr/bin/env bash
# Real-size smoke run on CPU: 2 GRPO steps of a Qwen2.5-0.5B-shaped model (494M parameters,
# 151,936-row embedding, Qwen's real tokenizer; random weights) with a reference model (KL),
# fp32 AdamW state and a checkpoint after each step, then a resume from step 1 that must end
# on the same weights. Prints seconds per step (rollout / learner), peak RSS and checkpoint
# size. Proves that loading, memory and checkpointing hold at real shapes, not speed.
#
#   scripts/smoke_real_size.sh            # needs runs/qwen2.5-0.5b-shaped (make_qwen_shaped.py)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODEL=${MODEL:-runs/qwen2.5-0.5b-shaped}
OUT=runs/smoke-real-size
if [ ! -f "$MODEL/model.safetensors" ]; then
    echo "no $MODEL: make it first with  .venv/bin/python scripts/make_qwen_shaped.py  (see its header)" >&2
    exit 1
fi
cargo build --release -q
rm -rf "$OUT" && mkdir -p "$OUT"
cat > "$OUT/recipe.toml" <<EOF
[run]
name = "smoke"
seed = 0
output_dir = "$OUT/run"

[model]
path = "$PWD/$MODEL"

[data]
train = "$PWD/data/gsm8k/test.jsonl[:16]"
prompt_field = "question"
template = "chat"

[rollout]
group_size = 2
prompts_per_step = 2
max_new_tokens = 32
temperature = 1.0

[[rewards]]
kind = "accuracy"
last_number_fallback = true

[grpo]
beta = 0.04

[optim]
lr = 1e-6

[train]
steps = 2
save_every = 1
log_samples_every = 0
EOF
/usr/bin/time -v target/release/ponder train "$OUT/recipe.toml" > "$OUT/train.out" 2> "$OUT/train.log" || { tail -20 "$OUT/train.log"; exit 1; }
RUN=$(dirname "$(find "$OUT/run" -name metrics.jsonl | head -1)")
python3 - "$RUN/metrics.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if "time/step_s" in m:
        print(f"step {m['step']}: {m['time/step_s']:.1f} s (rollout {m['time/rollout_s']:.1f} s, learner {m['time/learner_s']:.1f} s)")
EOF
grep -E 'Maximum resident|Elapsed' "$OUT/train.log" | sed 's/^\s*/  /'
du -sh "$RUN"/checkpoints/* | sed 's/^/  checkpoint /'
# Resume from step 1's checkpoint: step 2 again must land on the same weights.
cp -r "$RUN" "$OUT/resumed"
rm -rf "$OUT/resumed/checkpoints/step-2"
target/release/ponder train --resume "$OUT/resumed" > /dev/null 2> "$OUT/resume.log" || { tail -20 "$OUT/resume.log"; exit 1; }
if cmp -s "$RUN/checkpoints/step-2/model.safetensors" "$OUT/resumed/checkpoints/step-2/model.safetensors"; then
    echo "  resume from step 1: step-2 weights identical"
else
    echo "  resume from step 1: step-2 weights DIFFER" >&2
    exit 1
fi
