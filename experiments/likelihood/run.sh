#!/usr/bin/env bash
# The dLLM and its AR twin (configs/llada_small.py, configs/ar_small.py: same network, data,
# optimizer and 900 steps = 3.7M training bytes), then both validation figures.
# About 23 minutes on a 2-core CPU. Training runs go to $RUNS (kept for experiments/reversal).
# Arguments go to both training commands, e.g. --config.train.num_steps=20000 on an accelerator.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-/tmp/dllm_jax_experiments}
for kind in dllm ar; do
  config=configs/$([ "$kind" = dllm ] && echo llada_small || echo ar_small).py
  python -m dllm_jax.main --config="$config" --workdir="$RUNS/likelihood/$kind" "$@"
done
python -m dllm_jax.benchmark --task=likelihood --dllm_checkpoint="$RUNS/likelihood/dllm" \
  --ar_checkpoint="$RUNS/likelihood/ar" --out=experiments/likelihood/results
