#!/usr/bin/env bash
# One-step-off overlap against synchronous GRPO steps, interleaved: `ponder bench train` with
# rollout.staleness 0 and 1, at the learner token caps 0 (one pass) and 4096 (the default),
# R rounds. Prints each run's step times, rollout and learner figures and peak memory.
#
#   scripts/bench_overlap.sh [MODEL]          (default runs/bench-model, made if missing)
#
# Knobs (environment): R [3], THREADS [2], WORKERS [2], ROLLOUT_THREADS [1], STEPS [5],
# PONDER [./target/release/ponder]. Run it on a quiet machine.
set -euo pipefail
MODEL=${1:-runs/bench-model}
PONDER=${PONDER:-./target/release/ponder}
R=${R:-3}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-2}
ROLLOUT_THREADS=${ROLLOUT_THREADS:-1}
STEPS=${STEPS:-5}
[ -x "$PONDER" ] || { echo "error: $PONDER not found; build it with cargo build --release" >&2; exit 1; }
if [ ! -f "$MODEL/config.json" ]; then
  echo "creating the benchmark model in $MODEL" >&2
  "$PONDER" init-model --out "$MODEL" >&2
fi
for r in $(seq 1 "$R"); do
  for cap in 0 4096; do
    for st in 0 1; do
      echo "== round $r/$R: token cap $cap, staleness $st"
      "$PONDER" bench train --model "$MODEL" --threads "$THREADS" --workers "$WORKERS" --rollout-threads "$ROLLOUT_THREADS" \
        --steps "$STEPS" --beta 0.04 --max-tokens-per-micro-batch "$cap" --staleness "$st" |
        grep -E "steps \(s\)|seconds per step|rollout tokens|overlapped|peak memory"
    done
  done
done
