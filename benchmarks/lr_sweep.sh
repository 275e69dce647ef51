#!/usr/bin/env bash
# Learning-rate sweep behind the default recipes (mudpt_peft.trainer.TRAINING_RECIPES): every method preset at 0.5x,
# 1x and 2x its recipe's learning rate, 16 shots, on the embedded default (tiny CLIP, 8x8 digits), few-shot sample
# seed 2 (the main job uses seed 1). Writes out/sweep/<method>_<lr>/metrics.json (and <method>_<lr>.log beside it) and
# prints a table; a run whose metrics.json exists is not repeated.
#
#   bash benchmarks/lr_sweep.sh   (sets up and activates the environment as scripts/main.sh does: scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
MUDPT_EXTRAS=examples
# shellcheck disable=SC1091
. scripts/setup.sh

# one thread, as in scripts/main.sh: the tiny model gains nothing from more, and on a busy machine they slow it down
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p out/sweep
# the methods and their recipes' learning rates, from the library: "coop=0.002 vpt=0.0025 ..."
recipes=$(python -c '
from mudpt_peft.trainer import TRAINING_RECIPES
print(" ".join(method + "=" + str(recipe["learning_rate"]) for method, recipe in TRAINING_RECIPES.items()))
')
for recipe in $recipes; do
  method=${recipe%%=*}
  for factor in 0.5 1 2; do
    lr=$(python -c "print(${recipe#*=} * $factor)")
    out="out/sweep/${method}_${lr}"
    if [ ! -f "$out/metrics.json" ]; then
      python examples/fewshot.py --methods "$method" --shots 16 --seed 2 --lr "$lr" --output_dir "$out" > "$out.log" 2>&1 ||
        { echo "failed: $method $lr (see $out.log)"; continue; }
    fi
    echo "| $method | $lr | $(python -c "import json; print(json.load(open('$out/metrics.json'))['accuracy']['$method'])") |"
  done
done
