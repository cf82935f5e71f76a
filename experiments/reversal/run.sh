#!/usr/bin/env bash
# reverse_translation: both models trained alike (600 steps) on a 100-pair invented dictionary
# written one way only; reverse_completion: the models of experiments/likelihood (run it
# first, or this trains its own) on line pairs of the standard library's validation text.
# About 22 minutes on a 2-core CPU after experiments/likelihood. Arguments go to the
# reverse_translation command, e.g. --train_steps=5000 for a bigger run on an accelerator.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-/tmp/dllm_jax_experiments}
python -m dllm_jax.benchmark --task=reverse_translation --dictionary_size=100 \
  --pair_repeats=60 --train_steps=600 --out=experiments/reversal/results --runs="$RUNS" "$@"
completion=(--task=reverse_completion --pairs=200 --out=experiments/reversal/results --runs="$RUNS")
if [ -d "$RUNS/likelihood/dllm/checkpoints" ] && [ -d "$RUNS/likelihood/ar/checkpoints" ]; then
  completion+=(--dllm_checkpoint="$RUNS/likelihood/dllm" --ar_checkpoint="$RUNS/likelihood/ar")
else
  completion+=(--train_steps=900)
fi
python -m dllm_jax.benchmark "${completion[@]}"
