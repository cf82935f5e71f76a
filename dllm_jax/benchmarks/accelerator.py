r"""The machine record and summary of `experiments/accelerator/run.sh`.

  python -m dllm_jax.benchmarks.accelerator --out=DIR --write=env      # DIR/env.json
  python -m dllm_jax.benchmarks.accelerator --out=DIR --write=summary  # DIR/summary.md

`env` records the device, its count and peak, and the library versions; `summary` reads
DIR/parts.jsonl (one line per part the script ran: name, kind, command, status, seconds) and
each part's DIR/<name>.jsonl (train_speed or sample_speed rows) and writes tables in
BENCHMARKS.md's format, ready to paste, with every part's status so a missing figure says why.
"""

import datetime
import json
import os
import platform

from absl import app, flags

_OUT = flags.DEFINE_string('out', None, 'The run.sh output directory.')
_WRITE = flags.DEFINE_enum('write', None, ['env', 'summary'], 'What to write.')


def environment() -> dict:
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  from dllm_jax import metrics  # pylint: disable=g-import-not-at-top
  peak = metrics.peak_flops_per_device()
  return {'date': datetime.date.today().isoformat(), 'backend': jax.default_backend(),
          'device_kind': jax.devices()[0].device_kind, 'device_count': jax.device_count(),
          'peak_tflops_per_device': None if peak is None else peak / 1e12,
          'jax': jax.__version__, 'jaxlib': jaxlib.__version__, 'flax': flax.__version__,
          'python': platform.python_version(), 'host': platform.node()}


def _rows(path: str) -> list[dict]:
  if not os.path.isfile(path):
    return []
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.startswith('{')]


def _ms(seconds: float) -> str:
  return f'{seconds * 1e3:.3g} ms'


def _params(millions: float) -> str:
  return f'{millions / 1e3:.3g}B' if millions >= 1e3 else f'{millions:.3g}M'


def summarize(out: str) -> str:
  """summary.md's text from the files run.sh wrote in `out`."""
  env = _rows(os.path.join(out, 'env.json'))
  env = env[0] if env else {}
  machine = env.get('device_kind', 'unknown device')
  date = env.get('date', '')
  parts = _rows(os.path.join(out, 'parts.jsonl'))
  peak = env.get('peak_tflops_per_device')
  peak = (f'peak {peak:g} TFLOP/s per device (metrics.PEAK_FLOPS)' if peak else
          'no peak in metrics.PEAK_FLOPS: MFU and roofline use the measured f32 matmul peak')
  lines = [f'# Accelerator figures: {env.get("device_count", "?")} x {machine}, {date}', '',
           f'JAX {env.get("jax", "?")}, jaxlib {env.get("jaxlib", "?")}, Flax '
           f'{env.get("flax", "?")}, Python {env.get("python", "?")}; {peak}.', '']
  train = [(p, r) for p in parts if p['kind'] == 'train'
           for r in _rows(os.path.join(out, f'{p["part"]}.jsonl'))]
  if train:
    lines += ['## Training speed', '',
              '| config | attention | params | batch x seq | step time | tokens/s | TFLOP/s '
              '| MFU | compile | machine | date |', '| --- ' * 11 + '|']
    for p, r in train:
      c = r['config']
      lines.append(
          f'| `{p["config"]}` | {p["attention"]} | {_params(r["params_millions"])} | '
          f'{c["batch_size"]} x {c["seq_len"]} | {_ms(r["step_time_s"])} | '
          f'{r["tokens_per_sec"]:,.0f} | {r["tflops_per_device"]:.3g} | '
          f'{r["mfu"]:.1%} of {r["peak_tflops_per_device"]:.3g} ({r["peak_source"]}) | '
          f'{r["compile_s"]:.0f} s | {machine} | {date} |')
    lines.append('')
  sample = [(p, r) for p in parts if p['kind'] == 'sample'
            for r in _rows(os.path.join(out, f'{p["part"]}.jsonl'))]
  if sample:
    lines += ['## Sampling: per-step latency against the roofline', '',
              '| config | params | dtype | batch | step latency | roofline step | ratio '
              '| forward | jitted tokens/s | cached tokens/s | loop tokens/s | speedup (cached) '
              '| cached = exact | adaptive rule per call | machine | date |',
              '| --- ' * 16 + '|']
    for p, r in sample:
      lines.append(
          f'| `{p["config"]}` | {_params(r["params_millions"])} | {r["dtype"]} | '
          f'{r["batch_size"]} | '
          f'{_ms(r["step_latency_s"])} | {_ms(r["roofline_step_s"])} | '
          f'{r["step_latency_over_roofline"]:.2f}x | {_ms(r["forward_latency_s"])} | '
          f'{r["jitted_tokens_per_sec"]:,.0f} | {r["cached_tokens_per_sec"]:,.0f} | '
          f'{r["loop_tokens_per_sec"]:,.0f} | {r["speedup"]:.2f}x ({r["cached_speedup"]:.2f}x) '
          f'| {r["cached_agreement"]:.1%} | {r["adaptive_over_jitted"]:.3f}x | {machine} '
          f'| {date} |')
    first = sample[0][1]
    prompt_len = first['canvas_length'] - first['gen_length']
    lines += ['', f'{first["gen_length"]} tokens after a {prompt_len}-token prompt in '
              f'{first["steps"]} steps, blocks of {first["block_length"]}, random weights. '
              'Roofline: 2 x parameters x canvas tokens FLOPs per step at '
              f'{first["peak_tflops"]:.3g} TFLOP/s; `forward`: a bare forward pass in a loop; '
              '`cached`: block_cache (approximate, agreement with the exact sampler shown); '
              'adaptive rule per call: the `threshold` sampler at threshold 1 (same calls and '
              'tokens) over `jitted`.', '']
  lines += ['## Parts', '', '| part | status | seconds | budget (s) | command |',
            '| --- | --- | --- | --- | --- |']
  for p in parts:
    lines.append(f'| {p["part"]} | {p["status"]} | {p["seconds"]} | {p["budget_s"]} | '
                 f'`{p["command"]}` |')
  return '\n'.join(lines) + '\n'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _WRITE.value == 'env':
    env = environment()
    with open(os.path.join(_OUT.value, 'env.json'), 'w', encoding='utf-8') as f:
      f.write(json.dumps(env) + '\n')
    print(env['backend'])  # run.sh reads the backend from here
  else:
    text = summarize(_OUT.value)
    with open(os.path.join(_OUT.value, 'summary.md'), 'w', encoding='utf-8') as f:
      f.write(text)
    print(text)


if __name__ == '__main__':
  flags.mark_flags_as_required(['out', 'write'])
  app.run(main)
