#!/usr/bin/env bash
# Learner memory against speed: one GRPO step benchmark (`ponder bench train`) under each of
# the learner's memory settings, interleaved round by round, and (when PY has TRL) TRL's
# GRPOTrainer with and without its gradient checkpointing, at the same settings:
#   default                   layers with autograd, LM head in chunks of 256 positions
#   chunk CHUNK               LM head in chunks of CHUNK positions (grpo.logprob_chunk)
#   checkpointing             grpo.gradient_checkpointing = true
#   checkpointing + chunk     both
# Prints each setting's median s/step and peak RSS over R rounds, and the raw figures of
# every run under OUT. A random-weight model of SmolLM2-135M's shape is the default (made
# here once with `ponder init-model` if missing): at that size activations and logits, not
# dispatch, decide the memory.
#
#   scripts/bench_memory.sh
# Knobs (environment variables, defaults in brackets): R [2] rounds, THREADS [2],
#   MODEL [runs/smol135-shape], PROMPTS [4] G [4] TOKENS [128] STEPS [2], CAP [4096]
#   (grpo.max_tokens_per_micro_batch), CHUNK [32], WORKERS [2] ROLLOUT_THREADS [1],
#   PONDER [./target/release/ponder], PY [.venv/bin/python; TRL rows skipped if missing],
#   BASE [unset] another ponder binary (an older build) whose default setting runs as one
#     more row, to check that a change costs no speed, OUT [runs/bench-memory].
set -euo pipefail
cd "$(dirname "$0")/.."

R=${R:-2}
THREADS=${THREADS:-2}
MODEL=${MODEL:-runs/smol135-shape}
PROMPTS=${PROMPTS:-4}
G=${G:-4}
TOKENS=${TOKENS:-128}
STEPS=${STEPS:-2}
CAP=${CAP:-4096}
CHUNK=${CHUNK:-32}
WORKERS=${WORKERS:-2}
ROLLOUT_THREADS=${ROLLOUT_THREADS:-1}
PONDER=${PONDER:-./target/release/ponder}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/bench-memory}
BASE=${BASE:-}

[ -x "$PONDER" ] || { echo "error: $PONDER not found; build it with cargo build --release" >&2; exit 1; }
if [ ! -f "$MODEL/config.json" ]; then
  echo "creating a model of SmolLM2-135M's shape in $MODEL" >&2
  "$PONDER" init-model --out "$MODEL" --hidden 576 --layers 30 --heads 9 --kv-heads 3 \
      --intermediate 1536 --vocab-size 49152 >&2
fi
trl=0
if [ -x "$PY" ] && "$PY" -c "import trl" 2>/dev/null; then trl=1; fi
mkdir -p "$OUT"

common=(bench train --model "$MODEL" --prompts "$PROMPTS" --group-size "$G" --new-tokens "$TOKENS"
        --steps "$STEPS" --beta 0.04 --threads "$THREADS" --max-tokens-per-micro-batch "$CAP"
        --workers "$WORKERS" --rollout-threads "$ROLLOUT_THREADS")
names=("default" "chunk $CHUNK" "checkpointing" "checkpointing + chunk $CHUNK")
cmds=("$PONDER ${common[*]}" "$PONDER ${common[*]} --logprob-chunk $CHUNK" "$PONDER ${common[*]} --gradient-checkpointing"
      "$PONDER ${common[*]} --gradient-checkpointing --logprob-chunk $CHUNK")
if [ -n "$BASE" ]; then
  names+=("$BASE: default")
  cmds+=("$BASE ${common[*]}")
fi
if [ "$trl" = 1 ]; then
  trl_cmd="$PY scripts/bench_trl_grpo.py --model $MODEL --prompts $PROMPTS --group-size $G --new-tokens $TOKENS --steps $STEPS --beta 0.04 --threads $THREADS"
  names+=("TRL" "TRL, gradient_checkpointing")
  cmds+=("$trl_cmd" "$trl_cmd --gradient-checkpointing")
fi

for i in $(seq 1 "$R"); do
  for k in "${!names[@]}"; do
    log="$OUT/run-$k-$i.txt"
    # shellcheck disable=SC2086 # the command line is meant to split (no spaces in paths)
    ${cmds[$k]} > "$log" 2>&1 || { cat "$log" >&2; exit 1; }
    echo "round $i: ${names[$k]}: $(grep -h "seconds per step (median)" "$log" | head -n 1 | awk '{print $5}') s/step, $(grep -h "peak memory (RSS)" "$log" | head -n 1 | awk '{print $4}') MiB" >&2
  done
done

median() { sort -n | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }
echo "GRPO step on $MODEL: $PROMPTS prompts x G=$G x $TOKENS tokens, beta 0.04, fp32, $THREADS threads, token cap $CAP; ponder with $WORKERS rollout workers x $ROLLOUT_THREADS thread(s); median of $R interleaved rounds"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') ($(nproc) cores); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
printf '| %-40s | %8s | %15s |\n' "setting" "s/step" "peak RSS (MiB)"
printf '|%s|%s|%s|\n' "------------------------------------------" "---------:" "----------------:"
for k in "${!names[@]}"; do
  s=$(for i in $(seq 1 "$R"); do grep -h "seconds per step (median)" "$OUT/run-$k-$i.txt" | head -n 1 | awk '{print $5}'; done | median)
  m=$(for i in $(seq 1 "$R"); do grep -h "peak memory (RSS)" "$OUT/run-$k-$i.txt" | head -n 1 | awk '{print $4}'; done | median)
  printf '| %-40s | %8s | %15s |\n' "${names[$k]}" "$s" "$m"
done
