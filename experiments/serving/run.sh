#!/usr/bin/env bash
# Requests/s and p50/p99 latency of `python -m dllm_jax.serve` at 1, 8 and 32 concurrent
# clients, tiny and default models (random weights), batched (up to 32 samples per sampler
# call) against one request at a time, side by side. About 3 minutes on a 2-core CPU.
# Arguments go to the benchmark, e.g. --max_tokens=256 --steps=256 on an accelerator.
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m dllm_jax.benchmarks.serve_load --sizes=tiny,small --concurrency=1,8,32 \
  --requests=128 --out=experiments/serving/results "$@"
