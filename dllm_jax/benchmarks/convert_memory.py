r"""Peak host memory of `dllm_jax.convert.llada` against the safetensors shard size.

  python -m dllm_jax.benchmarks.convert_memory --work_dir=/tmp/convert_bench \
      --shard_mb=512,2048 --d_model=2560 --n_layers=20 --mlp_hidden_size=6912

For each shard size, writes a random-weight LLaDA-format model in bfloat16 (by default 1.75B
parameters, 3.5 GB), converts it in a child process and prints one JSON line: model and
shard size, the largest single tensor, the converter's peak resident memory (its maximum
RSS) and wall time. The files are deleted afterwards.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import ml_dtypes
from absl import app, flags

from dllm_jax.convert import synthetic

_WORK_DIR = flags.DEFINE_string('work_dir', '/tmp/convert_bench', 'Scratch directory.')
_SHARD_MB = flags.DEFINE_list('shard_mb', ['512', '2048'], 'Shard sizes to compare (MB).')
_D_MODEL = flags.DEFINE_integer('d_model', 2560, 'Model width.')
_N_LAYERS = flags.DEFINE_integer('n_layers', 20, 'Layers.')
_MLP = flags.DEFINE_integer('mlp_hidden_size', 6912, 'MLP width.')
_VOCAB = flags.DEFINE_integer('vocab', 32768, 'Embedding rows.')

_CHILD = ('import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); '
          'print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)')


def measure(shard_mb: int) -> dict:
  hf_dir = os.path.join(_WORK_DIR.value, f'hf_{shard_mb}mb')
  out = os.path.join(_WORK_DIR.value, f'out_{shard_mb}mb')
  shutil.rmtree(hf_dir, ignore_errors=True)
  shutil.rmtree(out, ignore_errors=True)
  d, n, f, v = _D_MODEL.value, _N_LAYERS.value, _MLP.value, _VOCAB.value
  synthetic.write_llada(hf_dir, d_model=d, n_layers=n, n_heads=d // 128,
                        mlp_hidden_size=f, embedding_size=v, dtype=ml_dtypes.bfloat16,
                        shard_bytes=shard_mb * 2**20)
  model_bytes = sum(os.path.getsize(os.path.join(hf_dir, x)) for x in os.listdir(hf_dir)
                    if x.endswith('.safetensors'))
  start = time.perf_counter()
  child = subprocess.run(
      [sys.executable, '-c', _CHILD, sys.executable, '-m', 'dllm_jax.convert.llada',
       f'--hf_dir={hf_dir}', f'--out={out}', '--dtype=bfloat16'],
      capture_output=True, text=True, check=True)
  seconds = time.perf_counter() - start
  peak_kib = int(child.stdout.strip().splitlines()[-1])
  shutil.rmtree(hf_dir, ignore_errors=True)
  shutil.rmtree(out, ignore_errors=True)
  return {'model_gb': model_bytes / 1e9, 'shard_mb': shard_mb,
          'shards': -(-model_bytes // (shard_mb * 2**20)),
          'largest_tensor_gb': max(v * d, f * d) * 2 / 1e9,
          'peak_rss_gb': peak_kib * 1024 / 1e9, 'seconds': seconds}


def main(argv):
  del argv
  for shard_mb in _SHARD_MB.value:
    print(json.dumps(measure(int(shard_mb))), flush=True)


if __name__ == '__main__':
  app.run(main)
