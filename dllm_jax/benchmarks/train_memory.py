r"""Temporary memory of the compiled train step as the sequence grows.

  python -m dllm_jax.benchmarks.train_memory --config=configs/llada_small.py:tiny \
      --config.model.vocab_size=126464 --seq_lens=128,256,512

Compiles the config's real train step on one device for each sequence length (nothing is
run) and prints one JSON line per length: XLA's temporary bytes
(`memory_analysis().temp_size_in_bytes`) beside batch x seq_len x vocab x 4, the size of one
float32 logits tensor over every position. With LLaDA's 126,464-token vocabulary and a small
width the logits dominate, so a step that materialised them would grow by at least that
much per added position; the chunked cross-entropy keeps the growth to activations.
"""

import json

import jax
from absl import app, flags
from ml_collections import config_flags

from dllm_jax import data as data_lib
from dllm_jax import sharding
from dllm_jax import train

def measure(config, seq_len: int) -> dict:
  """The compiled step's memory on one device at `seq_len` tokens per row."""
  config = config.copy_and_resolve_references()
  config.data.seq_len = seq_len
  config.mesh.update(data=1, fsdp=1, tensor=1)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  tokenizer = data_lib.make_tokenizer(config.data.tokenizer)
  with sharding.use_mesh(mesh, config.logical_axis_rules):
    exp = train.build(config, mesh, tokenizer)
    batch = {k: jax.ShapeDtypeStruct((config.train.batch_size, seq_len),
                                     'int32' if k == 'tokens' else 'bool',
                                     sharding=exp.batch_sharding)
             for k in train.batch_fields(config)}
    memory = exp.train_step.lower(exp.abstract_state, batch).compile().memory_analysis()
  rows = config.train.batch_size // config.train.microbatches
  return {'seq_len': seq_len, 'batch_size': config.train.batch_size,
          'microbatches': config.train.microbatches, 'vocab_size': exp.model_config.vocab_size,
          'd_model': exp.model_config.d_model, 'temp_bytes': memory.temp_size_in_bytes,
          'logits_bytes': rows * seq_len * exp.model_config.vocab_size * 4,
          'device': jax.devices()[0].device_kind}


def main(argv):
  del argv
  for seq_len in flags.FLAGS.seq_lens:
    print(json.dumps(measure(flags.FLAGS.config, int(seq_len))))


if __name__ == '__main__':  # flags only for the program: tests import `measure`
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.')
  flags.DEFINE_list('seq_lens', ['128', '256', '512'], 'Sequence lengths.')
  flags.mark_flags_as_required(['config'])
  app.run(main)
