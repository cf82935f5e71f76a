"""Batches concurrent generation requests into sampler calls of a few fixed shapes.

Every request becomes one row per sample. A worker thread takes the oldest waiting request,
gathers the others that can share its call (same sampler and generation bucket, guidance
on or off) up to `max_batch` rows, and runs them as one call of `sampling.sample_rows`, in
which each row keeps its own key, steps, block length, length and temperature. Shapes are
rounded up to buckets: batch rows to a power of two, the prompt (left-padded) and the
generation region (right-padded, out of attention) to the configured lengths, so that a
row samples as it would alone. A job may carry a suffix, fixed text after its generation
(infilling): its tokens follow the masks in the generation bucket. A block diffusion model
runs `sampling.sample_block_causal` instead, its blocks on an exact cache. `warm_up` compiles
every bucket ahead of time; after it, serving compiles nothing (counted by
`dllm_compilations_total`).
"""

import contextlib
import dataclasses
import itertools
import logging
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import prometheus_client as prom

from dllm_jax import generate
from dllm_jax import sampling
from dllm_jax.config import SAMPLERS

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
MAX_TOP_K = 2**31 - 1  # top_k past the vocabulary keeps everything
NO_SUFFIX = np.zeros(0, np.int32)


class QueueFull(Exception):
  """The queue holds `max_queue` rows already."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """One request's sampler settings, already validated."""
  gen_length: int
  steps: int
  block_length: int
  sampler: str = 'low_confidence'
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  cfg_scale: float = 0.0
  threshold: float = 0.9  # the adaptive samplers' bounds
  factor: float = 1.0
  entropy_bound: float = 0.1


@dataclasses.dataclass
class Row:
  """One generated sample: the text cut at the first stop id, and why it ended."""
  text: str
  tokens: int  # generated tokens before the cut
  finish_reason: str  # 'stop' (a stop id) or 'length'
  nfe: int  # the model calls its row used


@dataclasses.dataclass(eq=False)
class Job:
  """A request in flight: `prompts` (token ids, one per row) sampled with `settings`.

  `on_done(rows or exception)` and `on_step(step, canvases)` are called from engine
  threads; the API layer hands them on to its event loop."""
  prompts: list[np.ndarray]
  settings: Settings
  seed: int
  on_done: Callable
  on_step: Callable | None = None  # streaming: the canvas of every row after every step
  suffix: np.ndarray = dataclasses.field(default_factory=lambda: NO_SUFFIX)  # fixed tokens
  cancelled: bool = False
  enqueued: float = dataclasses.field(default_factory=time.monotonic)

  @property
  def key(self) -> tuple:
    return self.settings.sampler, self.settings.cfg_scale > 0


def _hand_over(callback: Callable, *args) -> None:
  """Calls a job's callback; one that fails (its client's loop gone) harms no other job."""
  try:
    callback(*args)
  except Exception:  # pylint: disable=broad-except
    logging.exception('a job callback failed')


def _bucket(value: int, buckets) -> int | None:
  return next((b for b in buckets if b >= value), None)


class Metrics:
  """The engine's Prometheus series, in a registry of its own."""

  def __init__(self):
    self.registry = prom.CollectorRegistry()
    r = self.registry
    self.queue_rows = prom.Gauge('dllm_queue_rows', 'Rows waiting to be batched.', registry=r)
    self.batch_rows = prom.Histogram('dllm_batch_rows', 'Rows (samples) per sampler call.',
                                     buckets=ROW_BUCKETS, registry=r)
    self.batch_seconds = prom.Histogram('dllm_batch_seconds', 'Seconds per sampler call.',
                                        registry=r)
    self.tokens = prom.Counter('dllm_generated_tokens', 'Tokens generated (before stop cuts).',
                               registry=r)
    self.compilations = prom.Counter('dllm_compilations', 'Sampler shapes compiled.',
                                     registry=r)
    self.requests = prom.Counter('dllm_http_requests', 'HTTP requests answered.',
                                 ['path', 'code'], registry=r)
    self.latency = prom.Histogram('dllm_request_seconds', 'Seconds from request to answer.',
                                  ['path'], registry=r,
                                  buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))


class Engine:
  """Serves one `generate.Model`; start() runs the worker, stop() ends it."""

  def __init__(self, model: generate.Model, *, max_batch: int = 8,
               prompt_buckets=(128, 512), gen_buckets=(64, 256), allow_cfg: bool = False,
               max_queue: int = 64, batch_wait_s: float = 0.005, max_steps: int = 1024):
    if model.config.causal:
      raise ValueError('the server samples diffusion models; this checkpoint is causal.')
    if model.block_size and any(b % model.block_size for b in (*prompt_buckets, *gen_buckets)):
      raise ValueError(f'prompt_buckets, gen_buckets: this block diffusion model decodes '
                       f'blocks of {model.block_size}, which must divide every bucket.')
    self.model, self.tokenizer = model, model.tokenizer
    self.max_batch, self.max_queue, self.batch_wait_s = max_batch, max_queue, batch_wait_s
    self.max_steps = max_steps
    self.prompt_buckets = tuple(sorted(prompt_buckets))
    self.gen_buckets = tuple(sorted(gen_buckets))
    self.row_buckets = tuple(b for b in ROW_BUCKETS if b < max_batch) + (max_batch,)
    self.allow_cfg = allow_cfg
    self.metrics = Metrics()
    tok = self.tokenizer
    self._vocab = sampling.SamplerConfig(mask_id=tok.mask_id, vocab_size=tok.vocab_size,
                                         eos_id=tok.eos_id, schedule=model.diffusion_schedule)
    self._compiled = {}
    self._pending: list[Job] = []
    self._cond = threading.Condition()
    self._paused = False
    self._running = None  # (jobs, prompt width) of the call in progress
    self._thread = None
    self._stopped = False

  # ---- shapes and compilation

  def shapes(self):
    """Every (rows, prompt width, generation width, guided) the engine may call."""
    return itertools.product(self.row_buckets, self.prompt_buckets, self.gen_buckets,
                             (False, True) if self.allow_cfg else (False,))

  def _executable(self, rows: int, width: int, gen: int, guided: bool):
    shape = (rows, width, gen, guided)
    if shape not in self._compiled:
      if self.model.block_size:  # blocks on an exact cache
        fn = jax.jit(sampling.sample_block_causal, static_argnums=(0, 6, 7),
                     static_argnames=('guided', 'block', 'on_step'))
        net, program = self.model.decode_fn, dict(block=self.model.block_size)
      else:
        fn = jax.jit(sampling.sample_rows, static_argnums=(0, 6, 7),
                     static_argnames=('guided', 'most_per_step', 'on_step'))
        net, program = self.model.logits_fn, dict(most_per_step=gen)
      canvas = jnp.zeros((rows, width + gen), jnp.int32)
      settings = sampling.row_settings(dataclasses.replace(
          self._vocab, block_length=self.model.block_size), rows, gen)
      with self.model.placed():
        self._compiled[shape] = fn.lower(
            net, self.model.params, canvas, jax.random.split(jax.random.key(0), rows),
            settings, jnp.int32(0), self._vocab, width, jnp.ones(canvas.shape, bool),
            guided=guided, on_step=self._report, report=jnp.bool_(False), **program).compile()
      self.metrics.compilations.inc()
    return self._compiled[shape]

  def warm_up(self, log: Callable = logging.info) -> None:
    """Compiles every shape, so that serving never compiles."""
    shapes = list(self.shapes())
    start = time.perf_counter()
    for i, shape in enumerate(shapes):
      self._executable(*shape)
      log(f'compiled {i + 1}/{len(shapes)}: rows, prompt, gen, guided = {shape}')
    log(f'warm-up: {len(shapes)} shapes in {time.perf_counter() - start:.1f}s')

  # ---- the queue

  def check(self, prompt_tokens: int, settings: Settings, rows: int,
            suffix_tokens: int = 0) -> None:
    """Raises sampling.SamplingError naming what this engine cannot serve."""
    limit = self.model.config.max_seq_len
    if rows > self.max_batch:
      raise sampling.SamplingError(f'n: {rows} samples in all; this server batches at most '
                                   f'{self.max_batch} (--max_batch).')
    if not 1 <= settings.gen_length <= self.gen_buckets[-1]:
      raise sampling.SamplingError(f'max_tokens: must be in [1, {self.gen_buckets[-1]}] '
                                   f'(--gen_buckets), got {settings.gen_length}.')
    if prompt_tokens > self.prompt_buckets[-1]:
      raise sampling.SamplingError(f'the prompt has {prompt_tokens} tokens; this server takes '
                                   f'at most {self.prompt_buckets[-1]} (--prompt_buckets).')
    if settings.gen_length + suffix_tokens > self.gen_buckets[-1]:
      raise sampling.SamplingError(f'suffix: its {suffix_tokens} tokens and max_tokens '
                                   f'({settings.gen_length}) must fit in '
                                   f'{self.gen_buckets[-1]} (--gen_buckets).')
    if prompt_tokens + settings.gen_length + suffix_tokens > limit:
      raise sampling.SamplingError(f'the prompt ({prompt_tokens} tokens), max_tokens '
                                   f'({settings.gen_length}) and suffix ({suffix_tokens}) '
                                   f'exceed the model\'s context of {limit} tokens.')
    if settings.steps > self.max_steps:
      raise sampling.SamplingError(f'steps: at most {self.max_steps} (--max_steps), got '
                                   f'{settings.steps}.')
    if settings.cfg_scale > 0 and not self.allow_cfg:
      raise sampling.SamplingError('cfg_scale: guidance needs the server started with '
                                   '--allow_cfg.')
    if settings.cfg_scale < 0:
      raise sampling.SamplingError(f'cfg_scale: must be >= 0, got {settings.cfg_scale}.')
    cfg = dataclasses.replace(self._vocab, **{f: getattr(settings, f) for f in (
        'sampler', 'steps', 'block_length', 'temperature', 'top_k', 'top_p')})
    if self.model.block_size:
      if suffix_tokens:
        raise sampling.SamplingError('suffix: a block diffusion model writes left to right; '
                                     'it cannot fill a gap before given text.')
      cfg = dataclasses.replace(cfg, block_causal=True)
      # Its prompt region is a whole number of blocks (the buckets are).
      prompt_tokens = -(-prompt_tokens // self.model.block_size) * self.model.block_size
    sampling.validate(cfg, prompt_tokens + settings.gen_length, prompt_tokens)

  def submit(self, job: Job) -> None:
    """Queues a checked job; raises QueueFull when `max_queue` rows wait already."""
    with self._cond:
      if self._waiting_rows() + len(job.prompts) > self.max_queue:
        raise QueueFull()
      self._pending.append(job)
      self.metrics.queue_rows.set(self._waiting_rows())
      self._cond.notify_all()

  def cancel(self, job: Job) -> None:
    """Drops a job: out of the queue if it waits, its result unused if it runs."""
    with self._cond:
      job.cancelled = True
      if job in self._pending:
        self._pending.remove(job)
        self.metrics.queue_rows.set(self._waiting_rows())

  def _waiting_rows(self) -> int:
    """Rows in the queue; the caller holds the lock."""
    return sum(len(j.prompts) for j in self._pending)

  @contextlib.contextmanager
  def paused(self):
    """Holds the worker between calls (requests queue up meanwhile); for maintenance and
    for tests that need requests to wait together."""
    with self._cond:
      self._paused = True
    try:
      yield
    finally:
      with self._cond:
        self._paused = False
        self._cond.notify_all()

  def queued_rows(self) -> int:
    with self._cond:
      return self._waiting_rows()

  # ---- the worker

  def start(self) -> None:
    """Starts the worker, unless it runs already."""
    if self._thread is not None and self._thread.is_alive():
      return
    self._stopped = False
    self._thread = threading.Thread(target=self._work, name='dllm-engine', daemon=True)
    self._thread.start()

  def stop(self) -> None:
    with self._cond:
      self._stopped = True
      for job in self._pending:
        _hand_over(job.on_done, RuntimeError('the server is shutting down.'))
      self._pending.clear()
      self._cond.notify_all()
    if self._thread:
      self._thread.join()

  def _take_batch(self) -> list[Job] | None:
    with self._cond:
      while True:
        while not self._stopped and (self._paused or not self._pending):
          self._cond.wait()
        if self._stopped:
          return None
        first = self._pending[0]
        deadline = first.enqueued + self.batch_wait_s
        while (not self._stopped and not self._paused and time.monotonic() < deadline
               and sum(len(j.prompts) for j in self._pending if j.key == first.key)
               < self.max_batch):
          self._cond.wait(max(0.0, deadline - time.monotonic()))
        if self._stopped:
          return None
        if not self._paused and first in self._pending:
          break  # else paused or cancelled meanwhile: start over
      bucket = lambda j: _bucket(j.settings.gen_length, self.gen_buckets)
      batch, rows = [], 0
      for job in list(self._pending):
        if (job.key == first.key and bucket(job) == bucket(first)
            and rows + len(job.prompts) <= self.max_batch):
          batch.append(job)
          rows += len(job.prompts)
          self._pending.remove(job)
      self.metrics.queue_rows.set(self._waiting_rows())
      return batch

  def _work(self):
    while True:
      batch = self._take_batch()
      if batch is None:
        return
      try:
        results = self._run(batch)
      except Exception as e:  # pylint: disable=broad-except
        logging.exception('a sampler call failed')
        results = [e] * len(batch)
      for job, result in zip(batch, results):
        if not job.cancelled:
          _hand_over(job.on_done, result)

  def _run(self, batch: list[Job]) -> list[list[Row]]:
    tok = self.tokenizer
    prompts = [p for job in batch for p in job.prompts]
    lengths = [job.settings.gen_length for job in batch for _ in job.prompts]
    suffixes = [job.suffix for job in batch for _ in job.prompts]
    rows = _bucket(len(prompts), self.row_buckets)
    width = _bucket(max(len(p) for p in prompts), self.prompt_buckets)
    gen = _bucket(max(n + len(s) for n, s in zip(lengths, suffixes)), self.gen_buckets)
    guided = batch[0].settings.cfg_scale > 0
    canvas = np.full((rows, width + gen), tok.pad_id, np.int32)
    valid = np.zeros(canvas.shape, bool)
    for r, (ids, n, suffix) in enumerate(zip(prompts, lengths, suffixes)):
      end = width + n + len(suffix)
      canvas[r, width - len(ids):width] = ids
      canvas[r, width:width + n] = tok.mask_id
      canvas[r, width + n:end] = suffix
      valid[r, width - len(ids):end] = True
    canvas[len(prompts):], valid[len(prompts):] = canvas[0], valid[0]  # unused filler rows
    per_row = [job.settings for job in batch for _ in job.prompts]
    per_row += [per_row[0]] * (rows - len(per_row))
    column = lambda f, dtype: jnp.asarray([getattr(s, f) for s in per_row], dtype)
    settings = sampling.RowSettings(
        steps=column('steps', jnp.int32), block_length=column('block_length', jnp.int32),
        gen_length=column('gen_length', jnp.int32), temperature=column('temperature',
                                                                       jnp.float32),
        top_k=column('top_k', jnp.int32), top_p=column('top_p', jnp.float32),
        cfg_scale=column('cfg_scale', jnp.float32), forbid_eos=jnp.zeros(rows, bool),
        threshold=column('threshold', jnp.float32), factor=column('factor', jnp.float32),
        entropy_bound=column('entropy_bound', jnp.float32),
        # The text is cut at the first EOS anyway: nothing after it is worth a model call.
        stop_at_eos=jnp.ones(rows, bool))
    keys = [jax.random.fold_in(jax.random.key(job.seed), i)
            for job in batch for i in range(len(job.prompts))]
    keys = jnp.stack(keys + keys[:1] * (rows - len(keys)))
    streaming = any(job.on_step for job in batch)
    executable = self._executable(rows, width, gen, guided)
    self._running = (batch, width)
    start = time.perf_counter()
    with self.model.placed():
      out = executable(self.model.params, jnp.asarray(canvas), keys, settings,
                       jnp.int32(SAMPLERS.index(batch[0].settings.sampler)),
                       jnp.asarray(valid), report=jnp.bool_(streaming))
      tokens, nfe = jax.device_get((out.tokens, out.nfe))
    self._running = None
    self.metrics.batch_seconds.observe(time.perf_counter() - start)
    self.metrics.batch_rows.observe(len(prompts))
    self.metrics.tokens.inc(sum(lengths))
    results, r = [], 0
    for job in batch:
      rows_out = []
      for _ in job.prompts:
        generated = tokens[r, width:width + lengths[r]]
        stop = np.flatnonzero(np.isin(generated, tok.stop_ids))
        cut = generated[:stop[0]] if len(stop) else generated
        rows_out.append(Row(tok.decode(cut), len(cut), 'stop' if len(stop) else 'length',
                            int(nfe[r])))
        r += 1
      results.append(rows_out)
    return results

  def _report(self, step, tokens_BxL) -> None:
    """io_callback of every step while some row streams: hands each streaming job the
    canvases of its rows, masks drawn as generate.MASK_GLYPH."""
    running = self._running
    if running is None:
      return
    batch, width = running
    tokens_BxL = np.asarray(tokens_BxL)
    r = 0
    for job in batch:
      n = job.settings.gen_length
      if job.on_step and not job.cancelled and step < job.settings.steps:
        region = tokens_BxL[r:r + len(job.prompts), width:width + n]
        canvases = [generate.render(self.tokenizer, row, row != self.tokenizer.mask_id)
                    for row in region]
        _hand_over(job.on_step, int(step), canvases,
                   [int((row == self.tokenizer.mask_id).sum()) for row in region])
      r += len(job.prompts)
