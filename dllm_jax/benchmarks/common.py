"""What the dLLM-vs-AR benchmark tasks share: the two models, training them alike, reports.

The two models are configs/llada_small.py (diffusion) and configs/ar_small.py (the same
network, causal, next-token loss) at one size: `tiny` (seconds, for tests) or `small`
(the README default). Each task writes OUT/<task>.json (every figure and setting),
OUT/<task>.md (a markdown table) and OUT/<task>.png where a plot helps.
"""

import importlib.util
import json
import os
from typing import Callable

import matplotlib

matplotlib.use('Agg')  # files only, no display
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=wrong-import-position

from dllm_jax import data as data_lib  # pylint: disable=wrong-import-position
from dllm_jax import diffusion  # pylint: disable=wrong-import-position
from dllm_jax import generate  # pylint: disable=wrong-import-position
from dllm_jax import model as model_lib  # pylint: disable=wrong-import-position
from dllm_jax import train  # pylint: disable=wrong-import-position

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'configs')
CONFIG_FILES = {'dllm': 'llada_small.py', 'ar': 'ar_small.py'}
MODELS = tuple(CONFIG_FILES)


def config_for(kind: str, size: str):
  path = os.path.join(CONFIG_DIR, CONFIG_FILES[kind])
  spec = importlib.util.spec_from_file_location(CONFIG_FILES[kind][:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(size)
  config.train.progress_bar = False
  return config


def train_model(kind: str, size: str, workdir: str, **overrides) -> dict:
  """Trains one model with `overrides` ({'train.num_steps': 100, ...}); returns the summary."""
  config = config_for(kind, size)
  for dotted, value in overrides.items():
    section, key = dotted.split('.')
    config[section][key] = value
  return train.train_and_evaluate(config, workdir)


def load_models(kinds, checkpoints: dict[str, str]) -> dict[str, generate.Model]:
  return {kind: generate.load(checkpoint=checkpoints[kind]) for kind in kinds}


def random_model(kind: str, size: str, max_len: int = 0) -> generate.Model:
  """A freshly initialised model of `kind`'s config, with a context of at least `max_len`:
  speed does not depend on the weights."""
  config = config_for(kind, size)
  config.model.max_seq_len = max(config.model.max_seq_len, max_len)
  tokenizer = data_lib.make_tokenizer(config.data.tokenizer)
  model_config = model_lib.ModelConfig.from_config(config.model,
                                                   train.vocab_size_for(config, tokenizer))
  params = model_lib.init_params(model_config, jax.random.key(0))
  return generate.Model(params, model_config, tokenizer, 0,
                        diffusion.schedule_from_config(config.diffusion))


def markdown_table(rows: list[dict], columns: list[str]) -> str:
  def cell(value):
    return f'{value:.4g}' if isinstance(value, float) else str(value)
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + ' --- |' * len(columns)]
  lines += ['| ' + ' | '.join(cell(row.get(c, '')) for c in columns) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


def write_report(out_dir: str, task: str, result: dict, rows: list[dict], columns: list[str],
                 plot: Callable | None = None, notes: str = '') -> None:
  """OUT/<task>.json with everything, OUT/<task>.md with the table, OUT/<task>.png."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, f'{task}.json'), 'w', encoding='utf-8') as f:
    json.dump({**result, 'rows': rows}, f, indent=2)
  with open(os.path.join(out_dir, f'{task}.md'), 'w', encoding='utf-8') as f:
    f.write(f'# {task}\n\n{notes}\n\n' if notes else f'# {task}\n\n')
    f.write(markdown_table(rows, columns))
  if plot is not None:
    figure = plot(rows)
    figure.savefig(os.path.join(out_dir, f'{task}.png'), dpi=120, bbox_inches='tight')
    plt.close(figure)
