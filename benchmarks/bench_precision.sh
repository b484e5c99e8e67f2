#!/usr/bin/env bash
# Does bf16 autocast training cost Dice? Same fold, seed, batches and iteration count in
# bf16 and fp32; prints each run's seconds per iteration and final validation Dice.
#   bash benchmarks/bench_precision.sh [DATA] [EPOCHS] [ITERS_PER_EPOCH]
set -euo pipefail
DATA=${1:-$(dirname "$0")/../../shared/data/Task04_Hippocampus}
EPOCHS=${2:-6}
ITERS=${3:-50}
SCRATCH=${SCRATCH:-$HOME/.cache/autoseg-bench/scratch/precision}
for p in bf16 fp32; do
  ws="$SCRATCH/$p"
  rm -rf "$ws"
  python -m autoseg plan-and-preprocess "$DATA" --workspace "$ws" -np 2 > /dev/null
  name=$(basename "$(cd "$DATA" && pwd)")
  start=$(date +%s)
  python -m autoseg train "$name" 3d_fullres 0 --workspace "$ws" --epochs "$EPOCHS" --iters-per-epoch "$ITERS" \
      --precision "$p" --seed 0 2>/dev/null | grep "validation of fold"
  echo "$p: $(( $(date +%s) - start )) s wall for $((EPOCHS * ITERS)) iterations + validation"
done
