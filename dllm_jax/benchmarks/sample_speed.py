r"""Sampling speed: the jitted `lax.scan` sampler against a per-step Python loop.

  python -m dllm_jax.benchmarks.sample_speed --config=configs/llada_small.py:tiny

For batch 1 and 16, generates --gen_length tokens in --steps steps (low-confidence
remasking, temperature 0, blocks of --block_length) after a short prompt, with randomly
initialised weights of the config's model (speed does not depend on the weights), two ways
in the same process:

- `jitted`: `sampling.sample` compiled once; the whole denoising loop is one XLA program.
- `loop`: how the reference PyTorch implementations run: a Python loop that calls a jitted
  forward pass once per step and does the remasking with eager array ops in between
  (argmax, softmax, gather, a top-k per row), as `generate()` in LLaDA's repository does.

Both produce the same tokens (checked). Prints one JSON line per batch size: tokens/s of
each and their ratio (median of --repeats runs after a warm-up run; compile time excluded).
"""

import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from dllm_jax import data as data_lib
from dllm_jax import model as model_lib
from dllm_jax import sampling
from dllm_jax import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.')
_GEN_LENGTH = flags.DEFINE_integer('gen_length', 128, 'Tokens generated.')
_STEPS = flags.DEFINE_integer('steps', 128, 'Denoising steps.')
_BLOCK_LENGTH = flags.DEFINE_integer('block_length', 32, 'Semi-autoregressive block length.')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 16, 'Prompt tokens.')
_BATCHES = flags.DEFINE_list('batch_sizes', ['1', '16'], 'Batch sizes to time.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs per method.')


def loop_sample(forward, params, canvas, cfg: sampling.SamplerConfig, prompt_len: int):
  """The per-step Python loop of the reference implementations, on the same algorithm."""
  x = jnp.asarray(canvas)
  gen_length = x.shape[1] - prompt_len
  num_blocks = gen_length // cfg.block_length
  steps_per_block = cfg.steps // num_blocks
  allowed = sampling.diffusion.predictable(forward(params, x).shape[-1], cfg.mask_id,
                                           cfg.vocab_size)
  for b in range(num_blocks):
    lo, hi = prompt_len + b * cfg.block_length, prompt_len + (b + 1) * cfg.block_length
    block_masks = np.asarray((x[:, lo:hi] == cfg.mask_id).sum(axis=1))
    schedule = (block_masks[:, None] // steps_per_block
                + (np.arange(steps_per_block)[None, :] < block_masks[:, None] % steps_per_block))
    for j in range(steps_per_block):
      logits = jnp.where(allowed, forward(params, x), -jnp.inf)
      x0 = jnp.argmax(logits, axis=-1)
      p = jax.nn.softmax(logits, axis=-1)
      conf = jnp.take_along_axis(p, x0[..., None], axis=-1)[..., 0]
      masked = x == cfg.mask_id
      in_block = jnp.zeros_like(masked).at[:, lo:hi].set(True)
      conf = jnp.where(masked & in_block, conf, -jnp.inf)
      commit = jnp.zeros_like(masked)
      for row in range(x.shape[0]):  # a top-k per row, as the reference does
        _, idx = jax.lax.top_k(conf[row], int(schedule[row, j]))
        commit = commit.at[row, idx].set(True)
      x = jnp.where(commit, x0, x)
  return x


def _median_time(fn, repeats):
  jax.block_until_ready(fn())  # warm-up: compiles
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def benchmark(config, batch_size: int, gen_length: int, steps: int, block_length: int,
              prompt_len: int, repeats: int) -> dict:
  tokenizer = data_lib.make_tokenizer(config.data.tokenizer)
  model_config = model_lib.ModelConfig.from_config(config.model,
                                                   train.vocab_size_for(config, tokenizer))
  params = model_lib.init_params(model_config, jax.random.key(0))
  logits_fn = model_lib.make_logits_fn(model_lib.abstract_model(model_config)[0])
  cfg = sampling.SamplerConfig(mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
                               eos_id=tokenizer.eos_id, steps=steps, block_length=block_length)
  prompt = np.random.default_rng(0).integers(32, 127, (batch_size, prompt_len))
  canvas = np.concatenate([prompt, np.full((batch_size, gen_length), tokenizer.mask_id)], 1)
  canvas = jnp.asarray(canvas, jnp.int32)
  jitted = jax.jit(sampling.sample, static_argnums=(0, 4, 5))
  run_jitted = lambda: jitted(logits_fn, params, canvas, jax.random.key(0), cfg,
                              prompt_len).tokens
  forward = jax.jit(lambda p, x: logits_fn(p, x))
  run_loop = lambda: loop_sample(forward, params, canvas, cfg, prompt_len)
  if not np.array_equal(run_jitted(), run_loop()):
    raise AssertionError('the jitted sampler and the loop disagree')
  t_jit, t_loop = _median_time(run_jitted, repeats), _median_time(run_loop, repeats)
  tokens = batch_size * gen_length
  return {'params_millions': model_config.num_params() / 1e6, 'batch_size': batch_size,
          'gen_length': gen_length, 'steps': steps, 'block_length': block_length,
          'device': f'{jax.devices()[0].device_kind}', 'jitted_s': t_jit, 'loop_s': t_loop,
          'jitted_tokens_per_sec': tokens / t_jit, 'loop_tokens_per_sec': tokens / t_loop,
          'speedup': t_loop / t_jit}


def main(argv):
  del argv
  for batch_size in _BATCHES.value:
    print(json.dumps(benchmark(_CONFIG.value, int(batch_size), _GEN_LENGTH.value, _STEPS.value,
                               _BLOCK_LENGTH.value, _PROMPT_LEN.value, _REPEATS.value)))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
