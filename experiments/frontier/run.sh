#!/usr/bin/env bash
# The speed-quality frontier of parallel decoding on the default-run dLLM and its AR twin
# (trained alike by experiments/likelihood/run.sh, whose runs it reads from $RUNS): 16
# windows of validation text, 32-token prompts, 128 generated tokens, batch 1 and 16,
# medians of 2 timed passes. About 40 minutes on a 2-core CPU at 0.13 TFLOP/s.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-/tmp/dllm_jax_experiments}
python -c "from dllm_jax import metrics; print(f'float32 matmul peak: ' \
  f'{metrics.measured_matmul_flops() / 1e12:.2f} TFLOP/s')"
python -m dllm_jax.benchmark --task=frontier --dllm_checkpoint="$RUNS/likelihood/dllm" \
  --ar_checkpoint="$RUNS/likelihood/ar" --prompts=16 --prompt_len=32 --gen_length=128 \
  --block_length=32 --batch_sizes=1,16 --repeats=2 --out=experiments/frontier/results "$@"
