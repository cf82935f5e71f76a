#!/usr/bin/env bash
# Block diffusion (BD3-LM) on the default run's data and budget (configs/llada_small.py:
# 900 steps, 3.7M training bytes): block sizes $BLOCKS (default 4 16 1) beside the
# full-sequence dLLM (K = 128) and the AR twin of experiments/likelihood/run.sh (same $RUNS,
# run it first); each checkpoint's validation bound; starting K = 4 from the AR twin against
# the same $ADAPT_STEPS from scratch; the frontier of the K = 4 model against the AR twin;
# the training loss's spread under clipped masking-rate ranges.
# On a 2-core CPU at 0.15 TFLOP/s: about 65 minutes per block size (the 2L pass doubles
# the full model's cost), 10 for the adaptation pair, 10 for the rest.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-/tmp/dllm_jax_experiments}
OUT=experiments/block_diffusion/results
BD="python -m dllm_jax.main --config=configs/llada_small.py --config.train.progress_bar=False"
for k in ${BLOCKS:-4 16 1}; do
  $BD --config.diffusion.block_size="$k" --workdir="$RUNS/block_diffusion/k$k" "$@"
  $BD --config.diffusion.block_size="$k" --workdir="$RUNS/block_diffusion/k$k" \
    --config.mode=eval
done
N=${ADAPT_STEPS:-60}  # each run's last validation NELBO is in its metrics.jsonl
for start in ar scratch; do
  init=$([ "$start" = ar ] && echo "$RUNS/likelihood/ar" || echo '')
  $BD --config.diffusion.block_size=4 --config.train.num_steps="$N" \
    --config.train.warmup_steps=10 --config.train.eval_every="$N" \
    --config.train.checkpoint_every="$N" --config.sampling.num_samples=0 \
    --config.train.init_from="$init" --workdir="$RUNS/block_diffusion/k4_${start}_$N"
done
python -m dllm_jax.benchmark --task=frontier --dllm_checkpoint="$RUNS/block_diffusion/k4" \
  --ar_checkpoint="$RUNS/likelihood/ar" --out="$OUT/frontier_k4" --prompts=8 \
  --batch_sizes=1 --repeats=1
python experiments/block_diffusion/timing.py --bd="$RUNS/block_diffusion/k4" \
  --ar="$RUNS/likelihood/ar" --out="$OUT"
python experiments/block_diffusion/loss_variance.py --workdir="$RUNS/block_diffusion/k4" \
  --out="$OUT" --draws=64
