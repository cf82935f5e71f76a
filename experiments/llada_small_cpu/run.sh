#!/usr/bin/env bash
# The README's main command, timed, with its metrics copied here.
set -euo pipefail
cd "$(dirname "$0")/../.."
workdir=$(mktemp -d)
/usr/bin/time -v python -m dllm_jax.main --config=configs/llada_small.py --workdir="$workdir" 2>&1 \
  | grep -E 'eval_bits_per_token|Elapsed|Maximum resident'
cp "$workdir/metrics.jsonl" experiments/llada_small_cpu/metrics.jsonl
