#!/usr/bin/env bash
# Learning-rate sweep behind the default recipes (mudpt_peft.trainer.TRAINING_RECIPES): every method preset at 0.5x,
# 1x and 2x its recipe's learning rate, 16 shots, on the embedded default (tiny CLIP, 8x8 digits), few-shot sample
# seed 2 (the main job uses seed 1). Writes out/sweep/<method>_<lr>/metrics.json and prints a table.
#
#   bash benchmarks/lr_sweep.sh   (after bash scripts/main.sh has set up .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
declare -A LR=([coop]=0.002 [vpt]=0.0025 [ivlp]=0.0035 [maple]=0.0035 [mudpt]=0.0025 [mudpt-linear]=0.0025 [cross-attention]=0.0025)
for method in coop vpt ivlp maple mudpt mudpt-linear cross-attention; do
  for factor in 0.5 1 2; do
    lr=$(python -c "print(${LR[$method]} * $factor)")
    out="out/sweep/${method}_${lr}"
    if [ ! -f "$out/metrics.json" ]; then
      python examples/fewshot.py --methods "$method" --shots 16 --seed 2 --lr "$lr" --output_dir "$out" > "$out.log" 2>&1 || echo "failed: $method $lr"
    fi
    echo "| $method | $lr | $(python -c "import json; print(json.load(open('$out/metrics.json'))['$method'])") |"
  done
done
