r"""Block diffusion decoding against the AR twin's KV-cache decoding at batch 1, timed
side by side: each setting generates 128 bytes after each of 8 prompts (the frontier's
windows of validation text, 32 bytes each), one prompt per call, in 3 interleaved rounds
(the median is reported), after a compiling call.

  python experiments/block_diffusion/timing.py --bd=RUN --ar=RUN --out=DIR
"""

import json
import os
import statistics
import time

import numpy as np
from absl import app, flags

from dllm_jax import data as data_lib
from dllm_jax import generate
from dllm_jax import metrics
from dllm_jax.benchmarks import common, frontier

flags.DEFINE_string('bd', None, 'A block diffusion training run.')
flags.DEFINE_string('ar', None, 'The AR twin\'s training run.')
flags.DEFINE_string('out', 'experiments/block_diffusion/results', 'Output directory.')
flags.DEFINE_integer('rounds', 3, 'Interleaved timing rounds.')

GREEDY = dict(temperature=0.0, steps=128)
BD_SETTINGS = [('128 steps', dict(GREEDY, sampler='low_confidence')),
               ('64 steps', dict(GREEDY, sampler='low_confidence', steps=64)),
               ('32 steps', dict(GREEDY, sampler='low_confidence', steps=32)),
               ('threshold 0.9', dict(GREEDY, sampler='threshold', threshold=0.9)),
               ('factor 1', dict(GREEDY, sampler='factor', factor=1.0)),
               ('threshold 0.7, T=1', dict(GREEDY, sampler='threshold', threshold=0.7,
                                          temperature=1.0))]


def main(argv):
  del argv
  f = flags.FLAGS
  bd, ar = generate.load(workdir=f.bd), generate.load(workdir=f.ar)
  records = data_lib.open_sources(common.config_for('dllm', 'small').data)['eval'].records
  text = ''.join(records[i]['text'].decode('utf-8') for i in range(len(records)))
  prompts, _ = frontier.prompts_from_text(bd.tokenizer, text, 8, 32, 128)
  settings = ([('ar', 'greedy', ar, dict(temperature=0.0)),
               ('ar', 'temperature 1', ar, dict(temperature=1.0))]
              + [('bd', label, bd, s) for label, s in BD_SETTINGS])
  run = lambda model, s: [generate.generate_ids(model, [p], gen_length=128, **s)[0]
                          for p in prompts]
  for _, _, model, s in settings:
    run(model, s)  # compiles
  times, nfe = {label: [] for _, label, _, _ in settings}, {}
  for _ in range(f.rounds):
    for _, label, model, s in settings:
      start = time.perf_counter()
      outs = run(model, s)
      times[label].append(time.perf_counter() - start)
      nfe[label] = float(np.mean([c.nfe for c in outs])) / 128
  rows = [{'model': kind, 'setting': label, 'block_size': model.block_size,
           'tokens_per_sec': len(prompts) * 128 / statistics.median(times[label]),
           'nfe_per_token': nfe[label], 'seconds': times[label]}
          for kind, label, model, _ in settings]
  peak = metrics.measured_matmul_flops() / 1e12
  for r in rows:
    print(f"{r['model']:3s} {r['setting']:20s} {r['tokens_per_sec']:7.0f} tokens/s, "
          f"{r['nfe_per_token']:.3f} NFE/token")
  print(f'float32 matmul: {peak:.3f} TFLOP/s')
  os.makedirs(f.out, exist_ok=True)
  with open(os.path.join(f.out, 'timing.json'), 'w', encoding='utf-8') as fh:
    json.dump({'rows': rows, 'matmul_tflops': peak}, fh, indent=1)


if __name__ == '__main__':
  flags.mark_flags_as_required(['bd', 'ar'])
  app.run(main)
