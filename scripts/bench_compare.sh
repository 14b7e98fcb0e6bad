#!/usr/bin/env bash
# Compare ponder against the Python reference implementations on the tiny benchmark model:
#   1. generation, batch 64 x 128 new tokens, sampling at T=1   (ponder vs transformers generate)
#   2. generation, batch 1 x 128 new tokens, greedy              (ponder vs transformers generate)
#   2b. generation, batch 64, up to 256 new tokens, sampling T=1, rows ending at random
#      (1% of the vocabulary counts as EOS: variable lengths, as in real rollouts)
#   3. one GRPO step, 8 prompts x G=8 x 128 tokens, beta 0.04    (ponder vs TRL GRPOTrainer)
#   3b. the same GRPO step with up to 256 tokens and rows ending at random (stop rate 0.01)
# Each pair runs interleaved R times (ponder, python, ponder, python, ...) so that drift in
# machine load hits both sides alike; the table shows the median over the R runs of each
# side's own median. Both sides are fp32 on CPU (GRPO steps: DTYPE) with the same number of intra-op threads.
#
# Usage (from the repo root, after `cargo build --release` and
#        `.venv/bin/pip install -r scripts/requirements-bench.txt`):
#   scripts/bench_compare.sh
# Knobs (environment variables, defaults in brackets):
#   R [3] interleaved rounds, THREADS [2], MODEL [runs/bench-model] (created if missing),
#   PONDER [./target/release/ponder], PY [.venv/bin/python], OUT [runs/bench-compare] (raw logs),
#   GEN_BATCH [64] GEN_TOKENS [128] GEN1_TOKENS [128] REPEATS [3] (generate repeats per run),
#   GENVAR_TOKENS [256] GENVAR_STOP_RATE [0.01] (the variable-length run),
#   TRAIN_PROMPTS [8] TRAIN_G [8] TRAIN_TOKENS [128] TRAIN_STEPS [5],
#   TRAIN_MICRO [0 = whole batch] completions per forward/backward pass, on both sides,
#   TRAIN_CAP [0] ponder's grpo.max_tokens_per_micro_batch (0 = no cap, the same passes as
#     TRL; 4096 = ponder's recipe default, which splits 8x8x128 into 4 passes of 16),
#   TRAINVAR_TOKENS [256] TRAINVAR_STOP_RATE [0.01] (the variable-length GRPO step; ponder
#     runs it with its default token cap, TRL with the whole batch in one pass),
#   ONLY ["gen gen1 genvar train trainvar"] (a subset of the benchmarks),
#   WORKERS [1] ROLLOUT_THREADS [0 = the learner's] ponder's rollout workers in the GRPO
#     steps (2 and 1 on a 2-core CPU: see the README's "Rollout workers on CPU").
#   DTYPE [f32] the GRPO steps' precision: bf16 = ponder's bf16 weights with fp32 master
#     weights against TRL's bf16=True (fp32 weights, bf16 autocast),
#   GRAD_CKPT [0] 1 = activation checkpointing on both sides (ponder's
#     grpo.gradient_checkpointing, TRL's gradient_checkpointing=True) in the GRPO steps,
#   STALENESS [0] ponder's rollout.staleness: 1 = one-step-off overlap (the next batch is
#     sampled while the learner updates; TRL's step stays synchronous: say so with figures).
# Run it on a quiet machine: with THREADS equal to the core count, any other load makes
# libtorch's OpenMP threads wait on each other and the figures become meaningless.
set -euo pipefail
cd "$(dirname "$0")/.."

R=${R:-3}
THREADS=${THREADS:-2}
MODEL=${MODEL:-runs/bench-model}
PONDER=${PONDER:-./target/release/ponder}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/bench-compare}
GEN_BATCH=${GEN_BATCH:-64}
GEN_TOKENS=${GEN_TOKENS:-128}
GEN1_TOKENS=${GEN1_TOKENS:-128}
GENVAR_TOKENS=${GENVAR_TOKENS:-256}
GENVAR_STOP_RATE=${GENVAR_STOP_RATE:-0.01}
REPEATS=${REPEATS:-3}
TRAIN_PROMPTS=${TRAIN_PROMPTS:-8}
TRAIN_G=${TRAIN_G:-8}
TRAIN_TOKENS=${TRAIN_TOKENS:-128}
TRAIN_STEPS=${TRAIN_STEPS:-5}
TRAIN_MICRO=${TRAIN_MICRO:-0}
TRAIN_CAP=${TRAIN_CAP:-0}
TRAINVAR_TOKENS=${TRAINVAR_TOKENS:-256}
TRAINVAR_STOP_RATE=${TRAINVAR_STOP_RATE:-0.01}
ONLY=${ONLY:-"gen gen1 genvar train trainvar"}
WORKERS=${WORKERS:-1}
ROLLOUT_THREADS=${ROLLOUT_THREADS:-0}
STALENESS=${STALENESS:-0}
DTYPE=${DTYPE:-f32}
GRAD_CKPT=${GRAD_CKPT:-0}
CKPT_ARG=()
[ "$GRAD_CKPT" = 1 ] && CKPT_ARG=(--gradient-checkpointing)

[ -x "$PONDER" ] || { echo "error: $PONDER not found; build it with cargo build --release" >&2; exit 1; }
[ -x "$PY" ] || { echo "error: $PY not found; create the venv and pip install -r scripts/requirements-bench.txt" >&2; exit 1; }
if [ ! -f "$MODEL/config.json" ]; then
  echo "creating the benchmark model in $MODEL" >&2
  "$PONDER" init-model --out "$MODEL" >&2
fi
mkdir -p "$OUT"

# field FILE PATTERN: the first number after PATTERN on the line that has it.
field() {
  awk -v pat="$2" 'i = index($0, pat) { rest = substr($0, i + length(pat)); if (match(rest, /[0-9]+(\.[0-9]+)?/)) { print substr(rest, RSTART, RLENGTH); exit } }' "$1"
}
# median of numbers on stdin (one per line)
median() { sort -g | awk '{v[NR]=$1} END {if (NR==0) {print "nan"} else if (NR%2) {print v[(NR+1)/2]} else {print (v[NR/2]+v[NR/2+1])/2}}'; }

run() { # run NAME SIDE ROUND CMD...: runs CMD, logs to $OUT/NAME-SIDE-ROUND.log
  local name=$1 side=$2 round=$3; shift 3
  local log="$OUT/$name-$side-$round.log"
  echo "[$name round $round/$R] $side: $*" >&2
  if ! "$@" >"$log" 2>"$log.err"; then
    echo "error: $side failed, see $log.err" >&2; tail -5 "$log.err" >&2; exit 1
  fi
  grep -E "tokens/s \(median\)|seconds per step|peak memory" "$log" | sed 's/^/    /' >&2
}

collect() { # collect NAME SIDE PATTERN: median over rounds
  local name=$1 side=$2 pat=$3
  for i in $(seq 1 "$R"); do field "$OUT/$name-$side-$i.log" "$pat"; done | median
}

for i in $(seq 1 "$R"); do
  for b in $ONLY; do
    case $b in
      gen)
        run gen ponder "$i" "$PONDER" bench generate --model "$MODEL" --batch "$GEN_BATCH" --new-tokens "$GEN_TOKENS" --repeats "$REPEATS" --threads "$THREADS"
        run gen ref "$i" "$PY" scripts/bench_generate_hf.py --model "$MODEL" --batch "$GEN_BATCH" --new-tokens "$GEN_TOKENS" --repeats "$REPEATS" --threads "$THREADS" ;;
      gen1)
        run gen1 ponder "$i" "$PONDER" bench generate --model "$MODEL" --batch 1 --new-tokens "$GEN1_TOKENS" --greedy --repeats "$REPEATS" --threads "$THREADS"
        run gen1 ref "$i" "$PY" scripts/bench_generate_hf.py --model "$MODEL" --batch 1 --new-tokens "$GEN1_TOKENS" --greedy --repeats "$REPEATS" --threads "$THREADS" ;;
      genvar)
        run genvar ponder "$i" "$PONDER" bench generate --model "$MODEL" --batch "$GEN_BATCH" --new-tokens "$GENVAR_TOKENS" --stop-rate "$GENVAR_STOP_RATE" --repeats "$REPEATS" --threads "$THREADS"
        run genvar ref "$i" "$PY" scripts/bench_generate_hf.py --model "$MODEL" --batch "$GEN_BATCH" --new-tokens "$GENVAR_TOKENS" --stop-rate "$GENVAR_STOP_RATE" --repeats "$REPEATS" --threads "$THREADS" ;;
      train)
        run train ponder "$i" "$PONDER" bench train --model "$MODEL" --prompts "$TRAIN_PROMPTS" --group-size "$TRAIN_G" --new-tokens "$TRAIN_TOKENS" --steps "$TRAIN_STEPS" --beta 0.04 --threads "$THREADS" --micro-batch "$TRAIN_MICRO" --max-tokens-per-micro-batch "$TRAIN_CAP" --workers "$WORKERS" --rollout-threads "$ROLLOUT_THREADS" --staleness "$STALENESS" --dtype "$DTYPE" "${CKPT_ARG[@]}"
        run train ref "$i" "$PY" scripts/bench_trl_grpo.py --model "$MODEL" --prompts "$TRAIN_PROMPTS" --group-size "$TRAIN_G" --new-tokens "$TRAIN_TOKENS" --steps "$TRAIN_STEPS" --beta 0.04 --threads "$THREADS" --micro-batch "$TRAIN_MICRO" --dtype "$DTYPE" "${CKPT_ARG[@]}" ;;
      trainvar)
        run trainvar ponder "$i" "$PONDER" bench train --model "$MODEL" --prompts "$TRAIN_PROMPTS" --group-size "$TRAIN_G" --new-tokens "$TRAINVAR_TOKENS" --stop-rate "$TRAINVAR_STOP_RATE" --steps "$TRAIN_STEPS" --beta 0.04 --threads "$THREADS" --workers "$WORKERS" --rollout-threads "$ROLLOUT_THREADS" --staleness "$STALENESS" --dtype "$DTYPE" "${CKPT_ARG[@]}"
        run trainvar ref "$i" "$PY" scripts/bench_trl_grpo.py --model "$MODEL" --prompts "$TRAIN_PROMPTS" --group-size "$TRAIN_G" --new-tokens "$TRAINVAR_TOKENS" --stop-rate "$TRAINVAR_STOP_RATE" --steps "$TRAIN_STEPS" --beta 0.04 --threads "$THREADS" --dtype "$DTYPE" "${CKPT_ARG[@]}" ;;
      *) echo "error: unknown benchmark '$b' in ONLY (gen, gen1, genvar, train, trainvar)" >&2; exit 1 ;;
    esac
  done
done

# ratio A B: A/B with 2 decimals
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b+0 == 0) print "n/a"; else printf "%.2f", a / b }'; }
fmt() { awk -v x="$1" 'BEGIN { if (x+0 >= 100) printf "%.0f", x; else printf "%.2f", x }'; }

versions=$("$PY" -c 'import torch, transformers, trl; print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")' 2>/dev/null || echo "?")
cpu=$(grep -m1 "model name" /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ *//' || true)

echo
echo "CPU: ${cpu:-unknown} ($(nproc) cores); $THREADS intra-op threads on both sides; GRPO steps in $DTYPE (generation benchmarks fp32); median of $R interleaved runs."
echo "Reference: $versions. Model: $MODEL ($(grep -o '"hidden_size": *[0-9]*' "$MODEL/config.json" | grep -o '[0-9]*$') hidden, $(grep -o '"num_hidden_layers": *[0-9]*' "$MODEL/config.json" | grep -o '[0-9]*$') layers, vocab $(grep -o '"vocab_size": *[0-9]*' "$MODEL/config.json" | grep -o '[0-9]*$'))."
echo
echo "| benchmark | ponder | reference | ponder / reference speed (memory) |"
echo "|---|---:|---:|---:|"
# row NAME KIND PATTERN LABEL: one table row from the medians of both sides' logs. KIND:
# speed (higher is better), time (lower is better), mem (ponder / reference), plain (no ratio).
row() {
  local p r
  p=$(collect "$1" ponder "$3"); r=$(collect "$1" ref "$3")
  case $2 in
    speed|mem) echo "| $4 | $(fmt "$p") | $(fmt "$r") | $(ratio "$p" "$r")x |" ;;
    time) echo "| $4 | $(fmt "$p") | $(fmt "$r") | $(ratio "$r" "$p")x |" ;;
    plain) echo "| $4 | $(fmt "$p") | $(fmt "$r") | |" ;;
  esac
}
for b in $ONLY; do
  case $b in
    gen)
      row gen speed "tokens/s (median)" "generate ${GEN_BATCH}x${GEN_TOKENS}, sampling T=1 (transformers): tokens/s"
      row gen time "ms per decode step" "generate ${GEN_BATCH}x${GEN_TOKENS}: ms per decode step"
      row gen mem "peak memory (RSS)" "generate ${GEN_BATCH}x${GEN_TOKENS}: peak RSS (MiB)" ;;
    gen1)
      row gen1 speed "tokens/s (median)" "generate 1x${GEN1_TOKENS}, greedy (transformers): tokens/s"
      row gen1 time "ms per decode step" "generate 1x${GEN1_TOKENS}: ms per decode step"
      row gen1 mem "peak memory (RSS)" "generate 1x${GEN1_TOKENS}: peak RSS (MiB)" ;;
    genvar)
      row genvar speed "tokens/s (median)" "generate ${GEN_BATCH}x<=${GENVAR_TOKENS}, rows end at random (stop rate ${GENVAR_STOP_RATE}): tokens/s"
      row genvar plain "completion length: mean" "genvar: mean completion length (tokens)"
      row genvar mem "peak memory (RSS)" "genvar: peak RSS (MiB)" ;;
    train)
      row train time "seconds per step (median)" "GRPO step ${TRAIN_PROMPTS}x${TRAIN_G}x${TRAIN_TOKENS}, beta 0.04, dapo (TRL GRPOTrainer): s/step"
      row train mem "peak memory (RSS)" "GRPO step: peak RSS (MiB)" ;;
    trainvar)
      row trainvar time "seconds per step (median)" "GRPO step ${TRAIN_PROMPTS}x${TRAIN_G}x<=${TRAINVAR_TOKENS}, rows end at random (stop rate ${TRAINVAR_STOP_RATE}): s/step"
      row trainvar plain "completion length: mean" "trainvar: mean completion length (tokens)"
      row trainvar mem "peak memory (RSS)" "trainvar: peak RSS (MiB)" ;;
  esac
done
echo
echo "Speed ratios above 1 mean ponder is faster; the memory ratio is ponder's peak RSS over the reference's (the Python side includes the torch import, see \"RSS after imports\" in its logs)."
echo "Raw logs: $OUT/"
