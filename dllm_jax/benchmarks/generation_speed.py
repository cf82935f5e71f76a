"""Task `speed`: generation latency of the diffusion model against the AR model with a KV cache.

For each batch size and generation length, times `generate.generate_ids` end to end
(median of `repeats` runs after a compiling warm-up) for the AR model and for the dLLM with a
fixed number of denoising steps and with steps = length (one token per step), and counts
the analytic FLOPs each spends per generated token. No claim is built in: the crossover
reported is the first length at which the measured dLLM throughput reaches the AR one.
"""

import statistics
import time

import numpy as np

from dllm_jax import generate
from dllm_jax import model as model_lib

BLOCK_LENGTH = 32
PROMPT_LEN = 16


def dllm_flops_per_token(cfg: model_lib.ModelConfig, prompt_len: int, gen_length: int,
                         steps: int) -> float:
  """Every step runs the full bidirectional network over prompt + generation."""
  length = prompt_len + gen_length
  return steps * length * cfg.flops_per_token(length, training=False) / gen_length


def ar_flops_per_token(cfg: model_lib.ModelConfig, prompt_len: int, gen_length: int) -> float:
  """One causal prefill, then one token per call attending to the cache so far."""
  matmul = 2 * cfg.num_params(include_embedding=False)
  attention = lambda keys: 4 * cfg.n_layers * keys * cfg.n_heads * cfg.head_dim
  prefill = prompt_len * cfg.flops_per_token(prompt_len, training=False)
  decode = sum(matmul + attention(prompt_len + i + 1) for i in range(gen_length - 1))
  return (prefill + decode) / gen_length


def _time(fn, repeats: int) -> float:
  fn()  # compiles
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def run(models: dict[str, generate.Model], *, lengths, batch_sizes, dllm_steps: int,
        prompt_len: int = PROMPT_LEN, repeats: int = 3,
        steps_equal_length_up_to: int = 1 << 30) -> tuple[dict, list[dict]]:
  rng = np.random.default_rng(0)
  rows = []
  for batch in batch_sizes:
    prompts = [rng.integers(32, 127, prompt_len).astype(np.int32) for _ in range(batch)]
    for length in lengths:
      settings = []
      if 'ar' in models:
        settings.append(('ar', 'KV cache', {}))
      if 'dllm' in models:
        block = min(BLOCK_LENGTH, length)
        fixed = max(dllm_steps, length // block) // (length // block) * (length // block)
        settings.append(('dllm', f'{fixed} steps', {'steps': fixed, 'block_length': block}))
        if length <= steps_equal_length_up_to:
          settings.append(('dllm', 'steps = length', {'steps': length, 'block_length': block}))
      for kind, label, extra in settings:
        model = models[kind]
        seconds = _time(lambda: generate.generate_ids(model, prompts, gen_length=length,
                                                      **extra), repeats)
        flops = (ar_flops_per_token(model.config, prompt_len + 1, length) if kind == 'ar'
                 else dllm_flops_per_token(model.config, prompt_len, length, extra['steps']))
        rows.append({'model': kind, 'setting': label, 'batch': batch, 'gen_length': length,
                     'latency_s': seconds, 'tokens_per_sec': batch * length / seconds,
                     'gflops_per_token': flops / 1e9})
  result = {'task': 'speed', 'lengths': list(lengths), 'batch_sizes': list(batch_sizes),
            'dllm_steps': dllm_steps, 'prompt_len': prompt_len, 'repeats': repeats,
            'steps_equal_length_up_to': min(steps_equal_length_up_to, max(lengths)),
            'params_millions': {k: m.config.num_params() / 1e6 for k, m in models.items()},
            'crossover': crossover(rows)}
  return result, rows


def crossover(rows: list[dict]) -> dict:
  """For each batch size and dLLM setting: the first length where dLLM tokens/s >= AR's."""
  out = {}
  ar = {(r['batch'], r['gen_length']): r['tokens_per_sec'] for r in rows if r['model'] == 'ar'}
  for r in sorted((r for r in rows if r['model'] == 'dllm'), key=lambda r: r['gen_length']):
    key = f'batch {r["batch"]}, dllm {r["setting"]}'
    if key not in out:
      out[key] = None
    if out[key] is None and r['tokens_per_sec'] >= ar.get((r['batch'], r['gen_length']), np.inf):
      out[key] = r['gen_length']
  return out


def plot(rows: list[dict]):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  batches = sorted({r['batch'] for r in rows})
  figure, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4), squeeze=False)
  for ax, batch in zip(axes[0], batches):
    for label in sorted({(r['model'], r['setting']) for r in rows}):
      points = sorted((r['gen_length'], r['tokens_per_sec']) for r in rows
                      if (r['model'], r['setting']) == label and r['batch'] == batch)
      ax.plot(*zip(*points), marker='o', label=f'{label[0]} ({label[1]})')
    ax.set(xscale='log', yscale='log', xlabel='generated tokens', ylabel='tokens / s',
           title=f'batch {batch}')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
  return figure
