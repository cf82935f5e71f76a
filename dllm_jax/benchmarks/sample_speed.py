r"""Sampling speed: the jitted `lax.scan` sampler against a per-step Python loop.

  python -m dllm_jax.benchmarks.sample_speed --config=configs/llada_small.py:tiny

For batch 1 and 16, generates --gen_length tokens in --steps steps (low-confidence
remasking, temperature 0, blocks of --block_length) after a --prompt_len prompt, four ways
in the same process, timed in interleaved rounds (one run of each per round):

- `jitted`: `sampling.sample` compiled once; the whole denoising loop is one XLA program.
- `loop`: how the reference PyTorch implementations run: a Python loop that calls a jitted
  forward pass once per step and does the remasking with eager array ops in between
  (argmax, softmax, gather, a top-k per row), as `generate()` in LLaDA's repository does.
- `forwards`: the same number of forward passes in one compiled loop with no remasking
  at all. No sampler that makes these forward passes can take less, so `loop_s /
  forwards_s` bounds the speedup any of them could reach over the loop on this machine.
- `cached`: `jitted` with `block_cache` (Fast-dLLM's dual cache): the same steps, all but
  the first of each block on the block's tokens alone. Approximate: `cached_agreement` is
  the fraction of generated tokens equal to `jitted`'s.
- `adaptive`: `jitted` with the adaptive `threshold` sampler at threshold 1, which makes
  the same calls and commits the same tokens (checked) but runs the adaptive machinery
  (the rule's count over sorted confidences, the early-exit bookkeeping):
  `adaptive_over_jitted` is what that machinery costs per model call.

By default the weights are randomly initialised (speed does not depend on them) and the
prompts random printable bytes; with --workdir, the latest checkpoint of that training run
is used, prompted with validation text of --config, so that `cached_agreement` says what
the cache changes in a trained model's output.

`jitted` and `loop` run the same algorithm: in float32 on a CPU they must produce the same
tokens (checked); elsewhere (bfloat16, GPU kernels) the forward inside the compiled loop may
round differently from the standalone one and flip near-ties of random weights, so the
fraction of agreeing generated tokens is reported instead. Prints one JSON line per batch
size: tokens/s, the speedups and the bound (medians over --repeats rounds after a warm-up;
compile time excluded), and the per-step latency against the compute roofline, 2 x
parameters x canvas tokens FLOPs per step at the device's peak (`metrics.PEAK_FLOPS`; on a
CPU, this machine's measured float32 matmul throughput).
"""

import dataclasses
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from dllm_jax import data as data_lib
from dllm_jax import generate
from dllm_jax import metrics as metrics_lib
from dllm_jax import model as model_lib
from dllm_jax import sampling
from dllm_jax import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.')
_GEN_LENGTH = flags.DEFINE_integer('gen_length', 128, 'Tokens generated.')
_STEPS = flags.DEFINE_integer('steps', 128, 'Denoising steps.')
_BLOCK_LENGTH = flags.DEFINE_integer('block_length', 32, 'Semi-autoregressive block length.')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 16, 'Prompt tokens.')
_BATCHES = flags.DEFINE_list('batch_sizes', ['1', '16'], 'Batch sizes to time.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed rounds (one run of each method each).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'A training run whose latest checkpoint to '
                               'use (prompted with validation text of --config) instead of '
                               'random weights.')


def loop_sample(forward, params, canvas, cfg: sampling.SamplerConfig, prompt_len: int):
  """The per-step Python loop of the reference implementations, on the same algorithm."""
  x = jnp.asarray(canvas)
  gen_length = x.shape[1] - prompt_len
  num_blocks = gen_length // cfg.block_length
  steps_per_block = cfg.steps // num_blocks
  argmax = jax.jit(sampling.argmax)  # the same kernel as the sampler's, in one call
  allowed = sampling.diffusion.predictable(forward(params, x).shape[-1], cfg.mask_id,
                                           cfg.vocab_size)
  for b in range(num_blocks):
    lo, hi = prompt_len + b * cfg.block_length, prompt_len + (b + 1) * cfg.block_length
    block_masks = np.asarray((x[:, lo:hi] == cfg.mask_id).sum(axis=1))
    schedule = (block_masks[:, None] // steps_per_block
                + (np.arange(steps_per_block)[None, :] < block_masks[:, None] % steps_per_block))
    for j in range(steps_per_block):
      logits = jnp.where(allowed, forward(params, x), -jnp.inf)
      x0 = argmax(logits)
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


def forward_passes(forward, params, canvas, steps: int):
  """`steps` forward passes in one compiled loop; each feeds one argmax back into the
  canvas, so no pass can be skipped or hoisted, and nothing else is done."""

  def body(_, x):
    logits = forward(params, x)
    return x.at[:, 0].set(jnp.argmax(logits[:, 0], axis=-1).astype(x.dtype))

  return jax.lax.fori_loop(0, steps, body, canvas)


def interleaved_medians(methods: dict, repeats: int) -> tuple[dict, dict]:
  """Median seconds of each zero-argument method over `repeats` rounds that run every
  method once, after a warm-up (compile) round: drifts of the machine hit all alike.
  Also returns what each method gave in the warm-up round."""
  outputs = {name: jax.block_until_ready(fn()) for name, fn in methods.items()}
  times = {name: [] for name in methods}
  for _ in range(repeats):
    for name, fn in methods.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}, outputs


def _weights_and_prompts(config, workdir: str | None, batch_size: int, prompt_len: int):
  """(model config, params, tokenizer, prompts [B, prompt_len]): random weights and bytes,
  or a trained run's checkpoint and validation text."""
  rng = np.random.default_rng(0)
  tokenizer = data_lib.make_tokenizer(config.data.tokenizer)
  if not workdir:
    model_config = model_lib.ModelConfig.from_config(config.model,
                                                     train.vocab_size_for(config, tokenizer))
    return (model_config, model_lib.init_params(model_config, jax.random.key(0)), tokenizer,
            rng.integers(32, 127, (batch_size, prompt_len)))
  model = generate.load(workdir)
  stream = train.token_streams(config, model.tokenizer, ('eval',))['eval']
  starts = rng.integers(0, len(stream) - prompt_len, batch_size)
  return (model.config, model.params, model.tokenizer,
          np.stack([stream[s:s + prompt_len] for s in starts]))


def benchmark(config, batch_size: int, gen_length: int, steps: int, block_length: int,
              prompt_len: int, repeats: int, peak_flops: float | None = None,
              workdir: str | None = None) -> dict:
  """One JSON-able row; `peak_flops` defaults to the device's (see the module docstring)."""
  model_config, params, tokenizer, prompt = _weights_and_prompts(config, workdir, batch_size,
                                                                 prompt_len)
  graphdef = model_lib.abstract_model(model_config)[0]
  logits_fn = model_lib.make_logits_fn(graphdef)
  decode_fn = model_lib.make_decode_fn(graphdef)
  cfg = sampling.SamplerConfig(mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
                               eos_id=tokenizer.eos_id, steps=steps, block_length=block_length)
  cached_cfg = dataclasses.replace(cfg, block_cache=True)
  adaptive_cfg = dataclasses.replace(cfg, sampler='threshold', threshold=1.0)
  canvas = np.concatenate([prompt, np.full((batch_size, gen_length), tokenizer.mask_id)], 1)
  canvas = jnp.asarray(canvas, jnp.int32)
  forward = jax.jit(lambda p, x: logits_fn(p, x))
  forwards = jax.jit(forward_passes, static_argnums=(0, 3))
  methods = {
      'jitted': lambda: sampling.sample(logits_fn, params, canvas, jax.random.key(0), cfg,
                                        prompt_len).tokens,
      'loop': lambda: loop_sample(forward, params, canvas, cfg, prompt_len),
      'forwards': lambda: forwards(logits_fn, params, canvas, steps),
      'cached': lambda: sampling.sample(logits_fn, params, canvas, jax.random.key(0),
                                        cached_cfg, prompt_len, decode_fn=decode_fn).tokens,
      'adaptive': lambda: sampling.sample(logits_fn, params, canvas, jax.random.key(0),
                                          adaptive_cfg, prompt_len).tokens,
  }
  seconds, outputs = interleaved_medians(methods, repeats)
  generated = {name: np.asarray(out)[:, prompt_len:] for name, out in outputs.items()}
  agreement = float(np.mean(generated['jitted'] == generated['loop']))
  if agreement < 1 and model_config.dtype == 'float32' and jax.default_backend() == 'cpu':
    raise AssertionError(f'the jitted sampler and the loop disagree on {1 - agreement:.1%} '
                         'of the tokens')
  if not np.array_equal(generated['adaptive'], generated['jitted']):
    raise AssertionError('threshold 1 committed other tokens than the one-token sampler')
  peak = peak_flops or metrics_lib.peak_flops_per_device() or metrics_lib.measured_matmul_flops()
  roofline_step_s = 2 * model_config.num_params() * canvas.size / peak
  tokens = batch_size * gen_length
  return {'params_millions': model_config.num_params() / 1e6, 'batch_size': batch_size,
          'gen_length': gen_length, 'steps': steps, 'block_length': block_length,
          'canvas_length': canvas.shape[1], 'dtype': model_config.dtype,
          'device': jax.devices()[0].device_kind, 'token_agreement': agreement,
          **{f'{name}_s': t for name, t in seconds.items()},
          'jitted_tokens_per_sec': tokens / seconds['jitted'],
          'loop_tokens_per_sec': tokens / seconds['loop'],
          'speedup': seconds['loop'] / seconds['jitted'],
          'speedup_bound': seconds['loop'] / seconds['forwards'],
          'cached_tokens_per_sec': tokens / seconds['cached'],
          'cached_speedup': seconds['loop'] / seconds['cached'],
          'cached_agreement': float(np.mean(generated['cached'] == generated['jitted'])),
          'adaptive_over_jitted': seconds['adaptive'] / seconds['jitted'],
          'step_latency_s': seconds['jitted'] / steps,
          'forward_latency_s': seconds['forwards'] / steps,
          'roofline_step_s': roofline_step_s, 'peak_tflops': peak / 1e12,
          'step_latency_over_roofline': seconds['jitted'] / steps / roofline_step_s}


def main(argv):
  del argv
  for batch_size in _BATCHES.value:
    print(json.dumps(benchmark(_CONFIG.value, int(batch_size), _GEN_LENGTH.value, _STEPS.value,
                               _BLOCK_LENGTH.value, _PROMPT_LEN.value, _REPEATS.value,
                               workdir=_WORKDIR.value)),
          flush=True)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
