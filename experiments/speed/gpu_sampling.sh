#!/usr/bin/env bash
# Sampling on one accelerator: per-step latency of the default config and the ~1B config
# (configs/llada_1b.py) against the compute roofline, and the jitted sampler (exact and with
# the block cache) against the per-step loop, at batch 1 and 16. A few minutes on one GPU;
# one JSON line per batch size in experiments/speed/results_gpu/. Arguments go to both
# commands (e.g. --repeats=9).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=experiments/speed/results_gpu
mkdir -p "$out"
for config in llada_small llada_1b; do
  python -m dllm_jax.benchmarks.sample_speed --config="configs/$config.py" "$@" \
    | tee "$out/sample_speed_$config.jsonl"
done
