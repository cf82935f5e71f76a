r"""The autoregressive baseline for configs/llada_small.py: the same network (same size,
same data, optimizer, schedule and mesh) with causal attention and next-token loss.

  python -m dllm_jax.main --config=configs/ar_small.py --workdir=/tmp/ar_small

Its validation bits per token score the same tokens as the diffusion model's NELBO, so the
two compare directly; `python -m dllm_jax.generate --workdir=/tmp/ar_small` decodes it with
a key/value cache. Variants as in llada_small.py: 'small' (default) and 'tiny'.
"""

import importlib.util
import os


def _llada_small():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'llada_small.py')
  spec = importlib.util.spec_from_file_location('llada_small', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(variant: str = 'small'):
  c = _llada_small().get_config(variant)
  c.model.causal = True
  c.train.objective = 'ar'
  c.sampling.temperature = 0.8
  return c
