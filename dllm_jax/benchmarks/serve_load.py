r"""Requests/s and latency of `dllm_jax.serve` under concurrent clients, batched against one
request at a time, side by side in one run.

  python -m dllm_jax.benchmarks.serve_load --sizes=tiny,small --concurrency=1,8,32 --requests=64 \
      --out=/tmp/serve_load

For each model size (configs/llada_small.py variants, random weights: speed does not depend
on them) two servers run on loopback in this process: `batched` (up to --max_batch rows per
sampler call) and `sequential` (--max_batch=1, each request alone). At each concurrency C,
C client threads send --requests completion requests in all (max_tokens, steps and
block_length as given, a different seed each), each client waiting for its answer before
sending the next. Reported: requests/s over the whole level, p50 and p99 latency, mean rows per
sampler call, and any non-200 answer (there should be none). Writes OUT/serve_load.{json,md}.
"""

import dataclasses
import http.client
import json
import os
import threading
import time
from concurrent import futures

import numpy as np
from absl import app, flags

from dllm_jax import cli
from dllm_jax.benchmarks import common
from dllm_jax.server import api
from dllm_jax.server import engine as engine_lib

PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'


@dataclasses.dataclass
class Load:
  max_tokens: int = 64
  steps: int = 32
  block_length: int = 32
  requests: int = 64  # per concurrency level, split evenly over the clients


def _post(base: str, body: dict) -> int:
  host, port = base.removeprefix('http://').split(':')
  conn = http.client.HTTPConnection(host, int(port), timeout=600)
  conn.request('POST', '/v1/completions', json.dumps(body), {'Content-Type': 'application/json'})
  status = conn.getresponse().status
  conn.close()
  return status


def drive(base: str, model_name: str, concurrency: int, load: Load) -> dict:
  """C closed-loop clients; every request's latency and status."""
  latencies, statuses, lock = [], [], threading.Lock()

  def client(i):
    for j in range(max(1, load.requests // concurrency)):
      body = {'model': model_name, 'prompt': PROMPT, 'max_tokens': load.max_tokens,
              'steps': load.steps, 'block_length': load.block_length, 'temperature': 0.0,
              'seed': i * 1000 + j}
      start = time.perf_counter()
      status = _post(base, body)
      with lock:
        latencies.append(time.perf_counter() - start)
        statuses.append(status)

  start = time.perf_counter()
  with futures.ThreadPoolExecutor(concurrency) as pool:
    list(pool.map(client, range(concurrency)))
  wall = time.perf_counter() - start
  return {'requests': len(statuses), 'seconds': wall, 'requests_per_sec': len(statuses) / wall,
          'p50_s': float(np.percentile(latencies, 50)),
          'p99_s': float(np.percentile(latencies, 99)),
          'non_200': sum(s != 200 for s in statuses)}


def _rows_per_call(engine: engine_lib.Engine) -> tuple[float, float]:
  histogram = engine.metrics.batch_rows.collect()[0].samples
  value = lambda suffix: next(s.value for s in histogram if s.name.endswith(suffix))
  return value('_count'), value('_sum')


def run(sizes, concurrency_levels, load: Load, max_batch: int, log=print) -> list[dict]:
  rows = []
  for size in sizes:
    model = common.random_model('dllm', size)
    prompt_tokens = len(model.tokenizer.encode(PROMPT))
    for mode, batch in (('batched', max_batch), ('sequential', 1)):
      engine = engine_lib.Engine(model, max_batch=batch, prompt_buckets=(prompt_tokens,),
                                 gen_buckets=(load.max_tokens,),
                                 max_queue=max(concurrency_levels) * 2)
      engine.warm_up(lambda message: None)
      with api.running(api.create_app(engine, model_name=size)) as base:
        for concurrency in concurrency_levels:
          calls0, rows0 = _rows_per_call(engine)
          result = drive(base, size, concurrency, load)
          calls, rows_done = _rows_per_call(engine)
          row = {'size': size, 'mode': mode, 'concurrency': concurrency, **result,
                 'rows_per_call': (rows_done - rows0) / max(calls - calls0, 1)}
          log(json.dumps(row))
          rows.append(row)
      engine.stop()
  return rows


def main(argv):
  del argv
  cli.quiet_library_logs()
  f = flags.FLAGS
  load = Load(f.max_tokens, f.steps, f.block_length, f.requests)
  levels = [int(c) for c in f.concurrency]
  rows = run(f.sizes, levels, load, f.max_batch)
  for row in rows:  # batched / sequential at the same size and concurrency
    if row['mode'] == 'batched':
      alone = next(r for r in rows if r['mode'] == 'sequential' and r['size'] == row['size']
                   and r['concurrency'] == row['concurrency'])
      row['speedup'] = row['requests_per_sec'] / alone['requests_per_sec']
  result = {'task': 'serve_load', 'load': dataclasses.asdict(load), 'max_batch': f.max_batch,
            'rows': rows}
  common.write_report(f.out, 'serve_load', result, rows, [
      'size', 'mode', 'concurrency', 'requests', 'requests_per_sec', 'p50_s', 'p99_s',
      'rows_per_call', 'non_200', 'speedup'])
  print(f'wrote {os.path.join(f.out, "serve_load")}.{{json,md}}')


if __name__ == '__main__':
  flags.DEFINE_list('sizes', ['tiny', 'small'], 'configs/llada_small.py variants.')
  flags.DEFINE_list('concurrency', ['1', '8', '32'], 'Concurrent clients, one level each.')
  flags.DEFINE_integer('requests', 64, 'Requests per concurrency level, over all clients.')
  flags.DEFINE_integer('max_tokens', 64, 'Tokens per request.')
  flags.DEFINE_integer('steps', 32, 'Denoising steps per request.')
  flags.DEFINE_integer('block_length', 32, 'Block length per request.')
  flags.DEFINE_integer('max_batch', 32, 'Rows per call of the batched server.')
  flags.DEFINE_string('out', None, 'Output directory.')
  flags.mark_flag_as_required('out')
  app.run(main)
