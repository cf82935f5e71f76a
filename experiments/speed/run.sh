#!/usr/bin/env bash
# Generation speed of the default-size dLLM and AR model (random weights: speed does not
# depend on them) for 64..1024 generated tokens at batch 1 and 16; steps = length is timed up
# to 512 tokens (it costs length^2). About 18 minutes on a 2-core CPU. Arguments go to the
# benchmark command, e.g. on an accelerator: --lengths=64,256,1024,4096 --batch_sizes=1,16,64
set -euo pipefail
cd "$(dirname "$0")/../.."
python -m dllm_jax.benchmark --task=speed --lengths=64,128,256,512,1024 --batch_sizes=1,16 \
  --dllm_steps=64 --repeats=1 --steps_equal_length_up_to=512 --out=experiments/speed/results "$@"
