"""Training metrics: throughput, MFU, device memory, and where they are written.

Only process 0 writes: `metrics.jsonl` (one JSON object per logged step), TensorBoard event
files (tensorboardX, no TensorFlow needed) and the absl log; a progress bar with an ETA when
stderr is a terminal.
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
from absl import logging

# Peak dense bfloat16 FLOP/s per device, matched against `device.device_kind` by prefix.
# A device not listed reports no MFU unless config.train.peak_flops_per_device is set.
PEAK_FLOPS = (
    ('NVIDIA H200', 989e12),
    ('NVIDIA H100', 989e12),
    ('NVIDIA GH200', 989e12),
    ('NVIDIA B200', 2250e12),
    ('NVIDIA A100', 312e12),
    ('NVIDIA L4', 121e12),
    ('TPU v6', 918e12),  # Trillium ('TPU v6 lite')
    ('TPU v5 lite', 197e12),  # v5e
    ('TPU v5p', 459e12),
    ('TPU v5', 459e12),
    ('TPU v4', 275e12),
)


def peak_flops_per_device(override: float = 0.0, device=None) -> float | None:
  if override:
    return float(override)
  kind = (device or jax.devices()[0]).device_kind
  return next((peak for prefix, peak in PEAK_FLOPS if kind.startswith(prefix)), None)


def measured_matmul_flops(n: int = 2048, repeats: int = 10) -> float:
  """Best float32 matmul FLOP/s of the first device: a practical peak for CPUs."""
  a = jax.device_put(jnp.ones((n, n), jnp.float32), jax.devices()[0])
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n**3 / min(times)


def device_memory_in_use() -> int | None:
  """Bytes in use on this process's first device, where the backend reports it."""
  stats = jax.local_devices()[0].memory_stats()
  return None if not stats else stats.get('bytes_in_use')


def throughput(num_steps: int, seconds: float, tokens_per_step: int, flops_per_token: float,
               peak_per_device: float | None, num_devices: int) -> dict[str, float]:
  """tokens/s, step time, achieved TFLOP/s per device and MFU over an interval."""
  out = {'step_time_s': seconds / num_steps,
         'tokens_per_sec': num_steps * tokens_per_step / seconds}
  flops_per_device = out['tokens_per_sec'] * flops_per_token / num_devices
  out['tflops_per_device'] = flops_per_device / 1e12
  if peak_per_device:
    out['mfu'] = flops_per_device / peak_per_device
  return out


class MetricWriter:
  """Writes scalars to metrics.jsonl and TensorBoard; a no-op on processes other than 0.

  A run resumed from step `initial_step` redoes the steps after it: their rows, written
  before the restart, are dropped from metrics.jsonl and hidden from TensorBoard, so each
  step is logged once.
  """

  def __init__(self, workdir: str, total_steps: int, initial_step: int, progress_bar: bool):
    self.active = jax.process_index() == 0
    self._jsonl = self._tb = self._bar = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, 'metrics.jsonl')
    _truncate(path, initial_step)
    self._jsonl = open(path, 'a', encoding='utf-8')
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'), purge_step=initial_step + 1)
    if progress_bar and sys.stderr.isatty():
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total_steps, initial=initial_step, unit='step', dynamic_ncols=True)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.active or not scalars:
      return
    scalars = {k: float(v) for k, v in scalars.items() if v is not None}
    self._jsonl.write(json.dumps({'step': step, **scalars}) + '\n')
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, step)
    self._tb.flush()
    shown = ' '.join(f'{k}={v:.4g}' for k, v in scalars.items())
    if self._bar is None:
      logging.info('step %d: %s', step, shown)
    else:
      self._bar.write(f'step {step}: {shown}')

  def advance(self, step: int, loss: float) -> None:
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      self._bar.set_postfix(loss=f'{loss:.4f}', refresh=False)

  def close(self) -> None:
    for handle in (self._bar, self._tb, self._jsonl):
      if handle is not None:
        handle.close()


def _truncate(path: str, last_step: int) -> None:
  """Keeps the rows of metrics.jsonl up to `last_step` (and drops a line cut by a crash)."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      try:
        if json.loads(line)['step'] <= last_step:
          kept.append(line.rstrip('\n') + '\n')
      except (ValueError, KeyError, TypeError):
        pass
  tmp = f'{path}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.writelines(kept)
  os.replace(tmp, path)  # atomic: a crash here loses no row
