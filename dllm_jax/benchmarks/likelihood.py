"""Task `likelihood`: validation bits/token of the AR model against the dLLM's NELBO, both
trained on the same data for the same steps (so the same tokens) from the same config.

The AR figure is an exact negative log-likelihood; the dLLM figure is an upper bound on
its negative log-likelihood (the continuous-time NELBO, with its Monte Carlo standard error).
Both score exactly the same validation tokens.
"""

import json
import os

from dllm_jax import train
from dllm_jax.benchmarks import common


def _eval_curve(workdir: str) -> list[tuple[int, float]]:
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    rows = [json.loads(line) for line in f]
  return [(r['step'], r['eval_bits_per_token']) for r in rows if 'eval_bits_per_token' in r]


def run(kinds, size: str, runs_dir: str, *, train_steps: int, workdirs: dict[str, str] = None,
        data_overrides: dict | None = None) -> tuple[dict, list[dict]]:
  """Trains each model in RUNS_DIR/<kind> (or uses given workdirs), then
  evaluates the latest checkpoints with --config.mode=eval's estimator."""
  rows, curves = [], {}
  for kind in kinds:
    overrides = dict(data_overrides or {})
    workdir = (workdirs or {}).get(kind)
    config = common.config_for(kind, size)
    for dotted, value in overrides.items():
      section, key = dotted.split('.')
      config[section][key] = value
    if workdir is None:
      workdir = os.path.join(runs_dir, kind)
      config.train.num_steps = train_steps
      config.train.warmup_steps = min(config.train.warmup_steps, train_steps // 2)
      config.train.eval_every = max(1, train_steps // 5)
      config.train.checkpoint_every = train_steps
      train.train_and_evaluate(config, workdir)
    config.mode = 'eval'
    report = train.evaluate_checkpoint(config, workdir)
    name = 'autoregressive_nll' if kind == 'ar' else 'continuous'
    tokens = report['step'] * config.train.batch_size * config.data.seq_len
    rows.append({'model': kind, 'bound': 'exact NLL' if kind == 'ar' else 'NELBO (upper bound)',
                 'steps': report['step'], 'training_tokens': tokens,
                 'val_bits_per_token': report[name]['bits_per_token'],
                 'stderr_bits': report[name]['stderr_bits'],
                 'perplexity_bound': report[name]['perplexity_bound']})
    curves[kind] = [(step * config.train.batch_size * config.data.seq_len, bits)
                    for step, bits in _eval_curve(workdir)]
  bits = {r['model']: r['val_bits_per_token'] for r in rows}
  result = {'task': 'likelihood', 'size': size, 'train_steps': train_steps, 'curves': curves,
            'gap_bits_per_token': bits['dllm'] - bits['ar'] if len(bits) == 2 else None}
  return result, rows


def make_plot(curves: dict):
  def plot(rows):
    del rows
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    figure, ax = plt.subplots(figsize=(6, 4))
    for kind, points in curves.items():
      if points:
        ax.plot(*zip(*points), marker='o', label={'ar': 'AR (NLL)', 'dllm': 'dLLM (NELBO)'}[kind])
    ax.set(xlabel='training tokens', ylabel='validation bits / token')
    ax.grid(True, alpha=0.3)
    ax.legend()
    return figure
  return plot
