r"""Training speed of a config: step time, tokens/s, TFLOP/s per device and MFU.

  python -m dllm_jax.benchmarks.train_speed --config=configs/llada_small.py:tiny --steps=20

Compiles the config's real train step (same sharding, donation and optimizer as
`dllm_jax.main`), runs `--warmup` steps, then times `--steps` steps on random tokens
(no input pipeline) and prints one JSON line. FLOPs are the model's analytic count
(bidirectional attention at the full L^2). MFU is against the device's peak from
`metrics.PEAK_FLOPS`; a device not in that table (a CPU) is compared with this machine's
measured float32 matmul throughput instead, and the output says which.
"""

import json
import statistics
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from dllm_jax import config as config_lib
from dllm_jax import data as data_lib
from dllm_jax import metrics as metrics_lib
from dllm_jax import sharding
from dllm_jax import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps after compilation.')


def benchmark(config, steps: int, warmup: int) -> dict:
  config_lib.validate(config)
  mesh = sharding.make_mesh(config.mesh)
  tokenizer = data_lib.make_tokenizer(config.data.tokenizer)
  batch_size, seq_len = config.train.batch_size, config.data.seq_len
  with sharding.use_mesh(mesh, config.logical_axis_rules):
    exp = train.build(config, mesh, tokenizer)
    rng = np.random.default_rng(0)
    batch = train.global_batch(
        {'tokens': rng.integers(0, 256, (batch_size, seq_len)).astype(np.int32),
         'valid': np.ones((batch_size, seq_len), bool)}, exp.batch_sharding)
    start = time.perf_counter()
    step = exp.train_step.lower(exp.abstract_state, batch).compile()
    compile_s = time.perf_counter() - start
    memory = step.memory_analysis()
    state = exp.init()
    for _ in range(warmup):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  peak = metrics_lib.peak_flops_per_device(config.train.peak_flops_per_device)
  peak_source = 'table' if peak else 'measured f32 matmul'
  peak = peak or metrics_lib.measured_matmul_flops()
  out = metrics_lib.throughput(1, step_s, batch_size * seq_len,
                               exp.model_config.flops_per_token(seq_len), peak,
                               jax.device_count())
  return {
      'config': {'d_model': exp.model_config.d_model, 'n_layers': exp.model_config.n_layers,
                 'seq_len': seq_len, 'batch_size': batch_size, 'dtype': exp.model_config.dtype,
                 'remat': exp.model_config.remat_policy},
      'params_millions': exp.model_config.num_params() / 1e6,
      'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
      'compile_s': compile_s,
      'step_time_s': step_s, 'step_time_min_s': min(times),
      'tokens_per_sec': out['tokens_per_sec'], 'tflops_per_device': out['tflops_per_device'],
      'mfu': out['mfu'], 'peak_tflops_per_device': peak / 1e12, 'peak_source': peak_source,
      'temp_memory_gib': None if memory is None else memory.temp_size_in_bytes / 2**30,
  }


def main(argv):
  del argv
  print(json.dumps(benchmark(_CONFIG.value, _STEPS.value, _WARMUP.value)))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
