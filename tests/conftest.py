"""Shared test setup: 8 simulated CPU devices, strict rank promotion, a tiny local corpus."""

import contextlib
import gc
import importlib.util
import os
import random

import jax

# Must run before JAX initialises its backends (the first device query does that).
jax.config.update('jax_num_cpu_devices', 8)
jax.config.update('jax_numpy_rank_promotion', 'raise')

import pytest  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, 'configs')

_WORDS = ('def class return import from self value index token model data batch step loss '
          'for while if else elif with as try except yield lambda None True False').split()


def _fake_source(rng: random.Random, n_functions: int) -> str:
  """Python-looking text with enough structure for a tiny model to learn something."""
  out = []
  for _ in range(n_functions):
    name = '_'.join(rng.sample(_WORDS, 2))
    args = ', '.join(rng.sample(_WORDS, rng.randint(1, 3)))
    out.append(f'def {name}({args}):\n')
    for _ in range(rng.randint(1, 4)):
      out.append(f'    {rng.choice(_WORDS)} = {rng.choice(_WORDS)}({rng.choice(_WORDS)})\n')
    out.append(f'    return {rng.choice(_WORDS)}\n\n')
  return ''.join(out)


@pytest.fixture(autouse=True, scope='module')
def _drop_compiled_programs():
  """Each test module's compiled programs are dropped when it ends: one process runs the
  whole suite, and would otherwise hold every program it ever compiled."""
  yield
  jax.clear_caches()
  gc.collect()


@pytest.fixture(scope='session')
def corpus_dir(tmp_path_factory):
  """Twelve small text files (about 40 KB in all), the same every run."""
  root = tmp_path_factory.mktemp('corpus')
  rng = random.Random(1234)
  for i in range(12):
    (root / f'module_{i:02d}.py').write_text(_fake_source(rng, 40 + 5 * i))
  return str(root)


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tensorflow_datasets'))


def load_config(path: str, variant: str | None = None):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def config_files() -> list[str]:
  return sorted(os.path.join(CONFIG_DIR, f) for f in os.listdir(CONFIG_DIR) if f.endswith('.py'))


@pytest.fixture
def tiny_config(corpus_dir, tfds_dir):
  """configs/llada_small.py:tiny on the test corpus, quiet, with a test-local TFDS dir."""
  config = load_config(os.path.join(CONFIG_DIR, 'llada_small.py'), 'tiny')
  config.data.files = corpus_dir
  config.data.data_dir = tfds_dir
  config.train.progress_bar = False
  return config


@contextlib.contextmanager
def count_compilations():
  """Yields a list that gets one entry per XLA compilation made inside the block."""
  compiled = []

  def listener(event, duration_s, **kwargs):
    del duration_s, kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      compiled.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield compiled
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
