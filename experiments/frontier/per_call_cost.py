"""What the early exit and the adaptive rule cost per model call, side by side.

  python experiments/frontier/per_call_cost.py [--old=224fc6c] [--repeats=5]

On the default config (random weights: speed does not depend on them), 128 tokens after a
16-token prompt in 128 steps (blocks of 32, greedy), batch 1 and 16: the fixed-step sampler
of revision --old (a fori_loop of exactly `steps` calls, read with `git show`), this one (a
while_loop with early exit and NFE counting) and its adaptive `threshold` sampler at
threshold 1 (the same calls and tokens, checked, with the adaptive rule computed at every
call). Interleaved rounds after a warm-up; prints ms per call and the ratios as JSON.
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax import data as data_lib
from dllm_jax import metrics
from dllm_jax import model as model_lib
from dllm_jax import sampling
from dllm_jax import train
from dllm_jax.benchmarks import common, sample_speed


def load_old(revision: str):
  source = subprocess.run(['git', 'show', f'{revision}:dllm_jax/sampling.py'], check=True,
                          capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.abspath(__file__))).stdout
  path = os.path.join(tempfile.mkdtemp(), 'old_sampling.py')
  with open(path, 'w', encoding='utf-8') as f:
    f.write(source)
  spec = importlib.util.spec_from_file_location('old_sampling', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--old', default='224fc6c')
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  old = load_old(args.old)
  config = common.config_for('dllm', 'small')
  tok = data_lib.make_tokenizer(config.data.tokenizer)
  model_config = model_lib.ModelConfig.from_config(config.model,
                                                   train.vocab_size_for(config, tok))
  params = model_lib.init_params(model_config, jax.random.key(0))
  logits_fn = model_lib.make_logits_fn(model_lib.abstract_model(model_config)[0])
  print(json.dumps({'float32_matmul_tflops': metrics.measured_matmul_flops() / 1e12}))
  settings = dict(mask_id=tok.mask_id, vocab_size=tok.vocab_size, eos_id=tok.eos_id,
                  steps=128, block_length=32)
  fixed, before = sampling.SamplerConfig(**settings), old.SamplerConfig(**settings)
  adaptive = dataclasses.replace(fixed, sampler='threshold', threshold=1.0)
  for batch in (1, 16):
    rng = np.random.default_rng(0)
    canvas = jnp.asarray(np.concatenate([rng.integers(32, 127, (batch, 16)),
                                         np.full((batch, 128), tok.mask_id)], 1), jnp.int32)
    run = lambda module, cfg: (lambda: module.sample(logits_fn, params, canvas,
                                                     jax.random.key(0), cfg, 16).tokens)
    seconds, outputs = sample_speed.interleaved_medians(
        {'old': run(old, before), 'fixed': run(sampling, fixed),
         'adaptive': run(sampling, adaptive)}, args.repeats)
    if not all(np.array_equal(outputs['fixed'], out) for out in outputs.values()):
      raise AssertionError('the three samplers committed different tokens')
    print(json.dumps({'batch': batch, **{f'{k}_ms_per_call': v * 1e3 / 128
                                          for k, v in seconds.items()},
                      'fixed_over_old': seconds['fixed'] / seconds['old'],
                      'adaptive_over_fixed': seconds['adaptive'] / seconds['fixed']}))


if __name__ == '__main__':
  main()
