"""Every config file loads, validates and trains one step; bad values name their field."""

import os

import pytest

from conftest import config_files, load_config
from dllm_jax import config as config_lib
from dllm_jax import train


def shrink(config, corpus_dir, tfds_dir):
  """The config's own settings at a size that trains one step in seconds."""
  config.model.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=0, mlp_dim=64,
                      vocab_size=0, vocab_multiple=8)
  config.data.update(source='text_files', files=corpus_dir, data_dir=tfds_dir, seq_len=16,
                     tokenizer='bytes')
  config.train.update(batch_size=8, microbatches=1, num_steps=1, warmup_steps=0, eval_batches=1,
                      progress_bar=False, init_from='',
                      objective='ar' if config.model.causal else 'elbo')
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  return config


@pytest.mark.parametrize('path', config_files(), ids=os.path.basename)
def test_config_file_loads_validates_and_trains_one_step(path, corpus_dir, tfds_dir, tmp_path):
  config = load_config(path)
  with open(path, encoding='utf-8') as f:
    assert 'python -m dllm_jax.main' in f.read(), 'the docstring gives the run command'
  summary = train.train_and_evaluate(shrink(config, corpus_dir, tfds_dir), str(tmp_path))
  assert summary['step'] == 1 and len(summary['eval_nelbo']) == 1


@pytest.mark.parametrize('field, value, message', [
    ('diffusion.schedule', 'quadratic', "'quadratic' is not one of"),
    ('model.n_kv_heads', 3, 'must divide model.n_heads'),
    ('model.remat_policy', 'most', "'most' is not one of"),
    ('model.attention_impl', 'flash', "'flash' is not one of"),
    ('data.seq_len', 0, 'must be > 0'),
    ('train.microbatches', 3, 'must divide train.batch_size'),
    ('train.ema_decay', 1.0, r'must be in \[0, 1\)'),
    ('mesh.tensor', 0, 'must be a positive size or -1'),
    ('diffusion.eps', 0.7, r'must be in \(0, 0.5\)'),
    ('diffusion.block_size', 5, 'must be 0 or divide data.seq_len=256, got 5'),
    ('diffusion.t_range', (0.6, 0.2), r'must be \(beta, omega\) with 0 <= beta <= omega'),
])
def test_bad_values_name_the_field(field, value, message):
  config = config_lib.base_config()
  section, key = field.split('.')
  config[section][key] = value
  with pytest.raises(config_lib.ConfigError, match=f'config.{field}: {message}'):
    config_lib.validate(config)


def test_unknown_key_is_refused():
  config = config_lib.base_config()
  config.train['num_stepz'] = 3
  with pytest.raises(config_lib.ConfigError, match='config.train.num_stepz: is not a known field'):
    config_lib.validate(config)


def test_mesh_not_matching_the_devices_is_a_clear_error(tiny_config, tmp_path):
  tiny_config.mesh.update(data=3, fsdp=1, tensor=1)
  with pytest.raises(config_lib.ConfigError, match='config.mesh'):
    train.train_and_evaluate(tiny_config, str(tmp_path))


def test_batch_that_cannot_split_over_the_mesh_is_a_clear_error(tiny_config, tmp_path):
  tiny_config.train.batch_size = 12  # 8 data-parallel devices
  with pytest.raises(config_lib.ConfigError, match='config.train.batch_size'):
    train.train_and_evaluate(tiny_config, str(tmp_path))
