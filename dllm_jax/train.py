"""train_and_evaluate(config, workdir): the one training loop.

config -> data pipeline -> jitted step(state, batch) -> metrics / checkpoints. The state is
created abstractly, sharded by the logical-axis rules, initialised by a jitted function with
out_shardings (or restored from the latest checkpoint in `workdir`), and the step is one
`jax.jit` with in/out shardings and donation, compiled ahead of step 0 with its memory
analysis logged. The loop dispatches step N+1 before it pulls step N's loss to the host,
so the device never waits on Python.
"""

import dataclasses
import json
import math
import os
import signal
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from dllm_jax import autoregressive
from dllm_jax import checkpoint as ckpt_lib
from dllm_jax import config as config_lib
from dllm_jax import data as data_lib
from dllm_jax import diffusion
from dllm_jax import metrics as metrics_lib
from dllm_jax import model as model_lib
from dllm_jax import sampling
from dllm_jax import sharding

ConfigError = config_lib.ConfigError
BATCH_AXES = ('activation_batch', 'activation_length')
NO_WEIGHT_DECAY = ('wte', 'attn_norm', 'ff_norm', 'ln_f')
# Independent key streams from the seed's key, fold_in(seed key, stream): one initialises the
# parameters, the other is TrainState.rng. (Step keys folded from the seed's key itself would
# give step 0 the key that initialised the parameters.)
INIT_STREAM, TRAIN_STREAM = 0, 1


class TrainingDiverged(RuntimeError):
  """The loss or gradient became NaN/Inf."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any  # {} when the EMA is off
  rng: jax.Array  # raw uint32 key data of the training stream; step keys: fold_in(rng, step)


def loss_figures(objective: str, nats) -> dict:
  """What a training loss in nats is logged as. The NELBO and the AR NLL are per token:
  bits per token. SFT's loss, each answer's NELBO over its length averaged over rows, is no
  per-token figure: it stays in nats under its own name."""
  return {'sft_loss': nats} if objective == 'sft' else {'bits_per_token': nats / diffusion.LN2}


def eval_figures(objective: str, nats: float, stderr_nats: float) -> dict:
  """What an evaluation (see `evaluate`) reports: loss_figures' with its standard error and,
  for per-token losses, the nats and the perplexity bound."""
  if objective == 'sft':
    return {'sft_loss': nats, 'sft_loss_stderr': stderr_nats}
  return {'nelbo_nats': nats, 'bits_per_token': nats / diffusion.LN2,
          'stderr_bits': stderr_nats / diffusion.LN2,
          'perplexity_bound': diffusion.report(nats)['perplexity_bound']}


def make_optimizer(train_config) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with linear warmup and cosine decay; no weight decay on norms or the embedding."""
  t = train_config
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.learning_rate, warmup_steps=t.warmup_steps,
      decay_steps=max(t.num_steps, t.warmup_steps + 1), end_value=t.learning_rate * t.min_lr_ratio)

  def decay_mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not any(getattr(k, 'key', None) in NO_WEIGHT_DECAY for k in path), params)

  chain = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
  chain.append(optax.adamw(schedule, b1=t.b1, b2=t.b2, eps=t.adam_eps,
                           weight_decay=t.weight_decay, mask=decay_mask))
  return optax.chain(*chain), schedule


def make_train_step(loss_fn, optimizer, schedule, microbatches: int, ema_decay: float, *,
                    ema_warmup: bool = False, objective: str = 'elbo', param_shardings=None):
  """step(state, batch) -> (state, metrics); microbatches accumulate gradients in a scan.

  `loss_fn(params, batch, key)` reports sums (see diffusion.make_loss_fn): the gradients of
  'nelbo_sum' are added over microbatches and divided once by the summed 'normalizer', so
  k microbatches give exactly the update of one batch. The accumulator is laid out as
  `param_shardings` (None: as the compiler likes). With `ema_warmup` the EMA decay at step
  t is min(ema_decay, (1 + t) / (10 + t)), so early averages forget the random init.
  `objective` names the logged loss (see loss_figures).
  """

  def grads_of(params, batch, key):
    def objective(p):
      _, aux = loss_fn(p, batch, key)
      return aux['nelbo_sum'], aux
    return jax.grad(objective, has_aux=True)(params)

  def train_step(state: TrainState, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    if microbatches == 1:
      grads, sums = grads_of(state.params, batch, key)
    else:
      # [B, ...] -> [k, B/k, ...] so that each microbatch keeps every device's rows.
      split = lambda x: x.reshape(x.shape[0] // microbatches, microbatches,
                                  *x.shape[1:]).swapaxes(0, 1)

      def accumulate(carry, i_batch):
        i, micro = i_batch
        micro = jax.tree.map(lambda x: sharding.constrain(x, BATCH_AXES), micro)
        return jax.tree.map(jnp.add, carry,
                            grads_of(state.params, micro, jax.random.fold_in(key, i))), None

      zero_sums = {k: jnp.zeros((), jnp.float32) for k in diffusion.AUX_SUMS}
      zero_grads = jax.tree.map(jnp.zeros_like, state.params)
      if param_shardings is not None:  # else a full copy may land on every device
        zero_grads = jax.lax.with_sharding_constraint(zero_grads, param_shardings)
      (grads, sums), _ = jax.lax.scan(
          accumulate, (zero_grads, zero_sums),
          (jnp.arange(microbatches), jax.tree.map(split, batch)))
    normalizer = jnp.maximum(sums['normalizer'], 1.0)
    grads = jax.tree.map(lambda g: g / normalizer.astype(g.dtype), grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema_decay:
      decay = ema_decay
      if ema_warmup:
        t = state.step.astype(jnp.float32)
        decay = jnp.minimum(ema_decay, (1.0 + t) / (10.0 + t))
      ema = jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype),
                         ema, params)
    loss = sums['nelbo_sum'] / normalizer
    metrics = {'loss': loss, **loss_figures(objective, loss),
               'grad_norm': optax.tree.norm(grads), 'learning_rate': schedule(state.step),
               'masked_fraction': sums['masked'] / jnp.maximum(sums['targets'], 1.0)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         ema_params=ema), metrics

  return train_step


def make_eval_step(loss_fn):
  def eval_step(params, batch, key):
    _, aux = loss_fn(params, batch, key)
    return aux['nelbo_sum'], aux['normalizer']
  return eval_step


@dataclasses.dataclass
class Experiment:
  """Everything built from a config before the loop: shapes, shardings, jitted steps."""
  config: ml_collections.ConfigDict
  model_config: model_lib.ModelConfig
  tokenizer: Any
  logits_fn: Any
  sampler_config: sampling.SamplerConfig  # for the samples printed at the end of training
  abstract_state: TrainState  # ShapeDtypeStructs carrying their shardings
  batch_sharding: jax.sharding.NamedSharding
  init: Any  # () -> a fresh TrainState
  init_from_params: Any  # params -> a TrainState starting from them
  train_step: Any
  eval_step: Any  # (params, batch, key) -> (nelbo_sum, normalizer), continuous time
  discrete_eval_step: Any  # the same for the discrete-time bound; None without one
  meta: dict  # what a checkpoint must agree with


def vocab_size_for(config, tokenizer) -> int:
  if config.model.vocab_size:
    if config.model.vocab_size < tokenizer.vocab_size:
      raise ConfigError(f'config.model.vocab_size: {config.model.vocab_size} is smaller than '
                        f'the tokenizer\'s {tokenizer.vocab_size} ids.')
    return config.model.vocab_size
  multiple = config.model.vocab_multiple
  return -(-tokenizer.vocab_size // multiple) * multiple


def build(config, mesh, tokenizer) -> Experiment:
  """Shardings, the jitted init and the jitted train/eval steps (not yet compiled)."""
  rules = config.logical_axis_rules
  t = config.train
  batch_rows(config, mesh)  # the batch must split over the mesh and the processes

  model_config = model_lib.ModelConfig.from_config(config.model, vocab_size_for(config, tokenizer))
  graphdef, abstract_params, param_axes = model_lib.abstract_model(model_config)
  param_sh = sharding.tree_shardings(mesh, rules, param_axes, abstract_params)
  replicated = sharding.replicated(mesh)
  optimizer, schedule = make_optimizer(t)
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  opt_sh = optax.tree_map_params(
      optimizer, lambda _, s: s, abstract_opt, param_sh,
      transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))
  state_sh = TrainState(step=replicated, params=param_sh, opt_state=opt_sh,
                        ema_params=param_sh if t.ema_decay else {}, rng=replicated)

  def init_fn(seed_key_data):
    seed_key = jax.random.wrap_key_data(seed_key_data)
    params = model_lib.init_params(model_config, jax.random.fold_in(seed_key, INIT_STREAM))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params),
                      ema_params=params if t.ema_decay else {},
                      rng=jax.random.key_data(jax.random.fold_in(seed_key, TRAIN_STREAM)))

  rng = jax.random.key_data(jax.random.key(config.seed))
  abstract = jax.eval_shape(init_fn, rng)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, state_sh)

  logits_fn = model_lib.make_logits_fn(graphdef)
  noise = diffusion.schedule_from_config(config.diffusion)
  ids = (tokenizer.mask_id, tokenizer.vocab_size)
  # The losses take the network split before its head, to compute logits a chunk at a time.
  features_fn, head_fn = model_lib.make_features_fn(graphdef), model_lib.make_head_fn(graphdef)

  def make_loss(padded: bool, discrete_steps: int = 0, t_range=(0.0, 1.0)):
    if t.objective == 'sft':
      return diffusion.make_sft_loss_fn(features_fn, noise, *ids, head_fn=head_fn, padded=padded)
    if t.objective == 'ar':
      return autoregressive.make_loss_fn(features_fn, tokenizer.bos_id, *ids, head_fn=head_fn,
                                         padded=padded)
    return diffusion.make_loss_fn(features_fn, noise, *ids, discrete_steps, head_fn=head_fn,
                                  padded=padded, block_size=block_size(config),
                                  t_range=t_range)

  # Training rows are full (packed text; SFT answers padded with EOS, which counts) or, for
  # a conversation with no room for an answer, all padding and scoring nothing. The train
  # step thus attends without a key mask (_loop checks); validation rows may be partly padded.
  loss_fn = make_loss(padded=True)
  discrete_loss_fn = None
  if t.objective == 'elbo' and config.eval.discrete_steps:
    discrete_loss_fn = make_loss(True, config.eval.discrete_steps)
  batch_sh = sharding.named_sharding(mesh, rules, BATCH_AXES)
  batch_tree = {k: batch_sh for k in batch_fields(config)}
  train_step = jax.jit(
      make_train_step(make_loss(False, t_range=tuple(config.diffusion.t_range)), optimizer,
                      schedule, t.microbatches, t.ema_decay, ema_warmup=t.ema_warmup,
                      objective=t.objective, param_shardings=param_sh),
      in_shardings=(state_sh, batch_tree), out_shardings=(state_sh, replicated),
      donate_argnums=0)
  eval_step, discrete_eval_step = (
      fn and jax.jit(make_eval_step(fn), in_shardings=(param_sh, batch_tree, replicated),
                     out_shardings=replicated) for fn in (loss_fn, discrete_loss_fn))
  init_from_params = jax.jit(
      lambda params: init_fn(rng).replace(params=params, opt_state=optimizer.init(params),
                                          ema_params=params if t.ema_decay else {}),
      in_shardings=(param_sh,), out_shardings=state_sh)
  meta = {'model': dataclasses.asdict(model_config), 'tokenizer': config.data.tokenizer,
          'mask_id': tokenizer.mask_id, 'schedule': dataclasses.asdict(noise),
          # These two change the optimizer state's structure.
          'gradient_clipping': t.grad_clip > 0, 'ema': t.ema_decay > 0}
  if block_size(config):  # absent: the full-sequence model (as in checkpoints made before)
    meta['block_size'] = block_size(config)
  return Experiment(config, model_config, tokenizer, logits_fn,
                    _sampler_config(config, tokenizer, noise), abstract, batch_sh,
                    jax.jit(lambda: init_fn(rng), out_shardings=state_sh), init_from_params,
                    train_step, eval_step, discrete_eval_step, meta)


def block_size(config) -> int:
  """The block diffusion block size K; 0 for the full-sequence model (one block)."""
  k = config.diffusion.block_size
  return k if 0 < k < config.data.seq_len else 0


def batch_fields(config) -> tuple[str, ...]:
  return ('tokens', 'valid', 'prompt') if config.train.objective == 'sft' else ('tokens', 'valid')


def _sample_lengths(config) -> tuple[int, int]:
  """(prompt, generation) lengths of the closing samples."""
  prompt_len = config.data.seq_len // 2
  return prompt_len, config.sampling.gen_length or config.data.seq_len - prompt_len


def _sampler_config(config, tokenizer, noise) -> sampling.SamplerConfig:
  s = config.sampling
  cfg = sampling.SamplerConfig(mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
                               eos_id=tokenizer.eos_id, sampler=s.sampler, steps=s.steps,
                               block_length=block_size(config) or s.block_length,
                               temperature=s.temperature, schedule=noise,
                               block_causal=bool(block_size(config)))
  prompt_len, gen_length = _sample_lengths(config)
  try:
    sampling.validate(cfg, prompt_len + gen_length, prompt_len)
  except sampling.SamplingError as e:
    raise ConfigError(f'config.sampling.{e}') from e
  return cfg


def global_batch(local: dict, batch_sharding) -> dict:
  """This process's rows -> one global array per field, sharded over the batch axes."""
  return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
          for k, v in local.items()}


class _Preemption:
  """Turns SIGTERM (a TPU preemption, `kill`) into a flag the loop checks between steps."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint and stopping.')
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _log_memory(compiled, name):
  try:
    mem = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # not every backend reports it
    mem = None
  if mem is None:
    logging.info('%s: no memory analysis on this backend', name)
    return
  gib = lambda b: b / 2**30
  logging.info('%s memory per device: arguments %.3f GiB, outputs %.3f GiB, temporaries %.3f '
               'GiB, generated code %.3f GiB', name, gib(mem.argument_size_in_bytes),
               gib(mem.output_size_in_bytes), gib(mem.temp_size_in_bytes),
               gib(mem.generated_code_size_in_bytes))


def _check_finite(step, values, checkpointer):
  for name in ('loss', 'grad_norm'):
    if not math.isfinite(values[name]):
      raise TrainingDiverged(
          f'{name} is {values[name]} at step {step}; training stopped. The last good '
          f'checkpoint is step {checkpointer.latest_step()} in {checkpointer.directory}.')


def evaluate(exp: Experiment, params, batches: list[dict], eval_step=None) -> tuple[float, float]:
  """The validation loss in nats (per token, but for SFT) and its standard error: the one
  evaluation of training and --config.mode=eval.

  Each of `eval.t_samples` passes over the fixed batches draws a fresh antithetic t per row
  from fixed keys, so calls on the same parameters agree; the passes' spread gives the
  standard error of the Monte Carlo estimate. The AR NLL is exact: one pass, error 0.
  `eval_step` (default: exp.eval_step, the continuous bound) may be another bound's.
  """
  config = exp.config
  eval_step = eval_step or exp.eval_step
  num_passes = 1 if config.train.objective == 'ar' else config.eval.t_samples
  on_device = [global_batch(b, exp.batch_sharding) for b in batches]
  passes = []
  for r in range(num_passes):
    key = jax.random.fold_in(_eval_key(config), r)
    nelbo, tokens = 0.0, 0
    for i, batch in enumerate(on_device):
      # Pulled step by step: many sharded steps in flight at once can deadlock the CPU
      # backend's collectives (XLA's rendezvous times out).
      n, c = eval_step(params, batch, jax.random.fold_in(key, i))
      nelbo, tokens = nelbo + float(n), tokens + int(c)
    passes.append(nelbo / max(tokens, 1))
  passes = np.array(passes)
  stderr = passes.std(ddof=1) / math.sqrt(len(passes)) if len(passes) > 1 else 0.0
  return float(passes.mean()), float(stderr)


def _eval_key(config) -> jax.Array:
  return jax.random.key(config.seed + 1)


def token_streams(config, tokenizer, roles) -> dict:
  """The cached token streams of the train and/or eval splits, the same on every process:
  process 0 prepares and tokenizes while the others wait, then they read its cache (or,
  without a shared filesystem, make their own, identical one)."""
  first = jax.process_index() == 0
  sync = lambda name: multihost_utils.sync_global_devices(f'dllm_jax:{name}')
  sources = data_lib.open_sources(config.data, is_coordinator=first,
                                  barrier=lambda: sync('data_prepared'))
  stream = lambda role: data_lib.token_stream(sources[role].records, tokenizer,
                                              sources[role].cache_dir,
                                              text_key=config.data.text_key)
  if first:
    for role in roles:
      stream(role)
  sync('data_tokenized')
  return {role: stream(role) for role in roles}


def batch_rows(config, mesh) -> np.ndarray:
  """The rows of each global batch that this process feeds (see sharding.process_rows);
  a ConfigError when the batch does not split over the mesh and the processes."""
  t = config.train
  batch_ways = mesh.shape['data'] * mesh.shape['fsdp']
  if (t.batch_size // t.microbatches) % batch_ways:
    raise ConfigError(f'config.train.batch_size: each microbatch ({t.batch_size} / '
                      f'{t.microbatches}) must split over the data x fsdp mesh axes '
                      f'({batch_ways} ways).')
  batch_sh = sharding.named_sharding(mesh, config.logical_axis_rules, BATCH_AXES)
  return sharding.process_rows(batch_sh, (t.batch_size, config.data.seq_len))


def _data(config, tokenizer, mesh, with_train: bool = True):
  """(this process's training iterator or None, its rows of the fixed validation batches).

  Batches are global, the same for any number of processes; each process reads its rows.
  """
  d, t = config.data, config.train
  rows = batch_rows(config, mesh)
  if t.objective == 'sft':
    template = data_lib.ChatTemplate(os.path.join(os.path.dirname(d.tokenizer),
                                                  'tokenizer_config.json'))
    splits = data_lib.open_chat_records(d)
    train_iter = with_train and data_lib.sft_iterator(
        splits['train'], tokenizer, template, seq_len=d.seq_len, batch_size=t.batch_size,
        seed=d.shuffle_seed, rows=rows)
    eval_data = data_lib.sft_eval_batches(
        splits['eval'], tokenizer, template, seq_len=d.seq_len, batch_size=t.batch_size,
        num_batches=t.eval_batches, rows=rows)
    return train_iter or None, eval_data
  streams = token_streams(config, tokenizer, ('train', 'eval') if with_train else ('eval',))
  train_iter = with_train and data_lib.train_iterator(
      streams['train'], tokenizer, seq_len=d.seq_len, batch_size=t.batch_size,
      seed=d.shuffle_seed, rows=rows)
  eval_data = data_lib.eval_batches(streams['eval'], tokenizer, seq_len=d.seq_len,
                                    batch_size=t.batch_size, num_batches=t.eval_batches,
                                    rows=rows)
  return train_iter or None, eval_data


def _initial_params(exp: Experiment, source: str):
  """The parameters of `source` (a converted model, a workdir or a checkpoint path)."""
  directory, step = ckpt_lib.locate(source)
  with ckpt_lib.Checkpointer(directory, read_only=True) as checkpointer:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise ckpt_lib.CheckpointError(f'config.train.init_from: no checkpoint in {source}.')
    saved = checkpointer.read_meta(step)['model']
    ours = dataclasses.asdict(exp.model_config)
    # Attention is not a parameter: an autoregressive model may start a diffusion model.
    differ = sorted(k for k in ours if k not in (*model_lib.RUNTIME_FIELDS, 'causal')
                    and saved.get(k) != ours[k])
    if differ:
      raise ckpt_lib.CheckpointError(
          f'config.train.init_from: {source} holds another model ('
          + ', '.join(f'{k}: {saved.get(k)!r} vs {ours[k]!r}' for k in differ) + ').')
    return checkpointer.restore_params(step, exp.abstract_state.params)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
  """Trains (resuming from the latest checkpoint in workdir); returns a summary dict.

  `devices` (default: all) are the devices the config's mesh is laid over.
  """
  config_lib.validate(config)
  t = config.train
  workdir = os.path.abspath(workdir)
  mesh = sharding.make_mesh(config.mesh, devices)
  tokenizer = data_lib.make_tokenizer(config.data.tokenizer)
  train_iter, eval_data = _data(config, tokenizer, mesh)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
      f.write(config.to_json_best_effort(indent=2))

  with sharding.use_mesh(mesh, config.logical_axis_rules):
    exp = build(config, mesh, tokenizer)
    mc = exp.model_config
    logging.info('model: %s; %.2fM parameters (%.2fM without the embedding)', mc,
                 mc.num_params() / 1e6, mc.num_params(include_embedding=False) / 1e6)
    abstract_batch = {k: jax.ShapeDtypeStruct((t.batch_size, config.data.seq_len),
                                              jnp.int32 if k == 'tokens' else jnp.bool_,
                                              sharding=exp.batch_sharding)
                      for k in batch_fields(config)}
    start = time.perf_counter()
    train_step = exp.train_step.lower(exp.abstract_state, abstract_batch).compile()
    logging.info('compiled the train step in %.1fs', time.perf_counter() - start)
    _log_memory(train_step, 'train step')

    with ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), keep=t.keep_checkpoints,
                               async_save=t.async_checkpointing) as checkpointer:
      latest = checkpointer.latest_step()
      if latest is None and t.init_from:
        state = exp.init_from_params(_initial_params(exp, t.init_from))
        logging.info('starting from the parameters of %s', t.init_from)
      elif latest is None:
        state = exp.init()
        logging.info('initialised a new model')
      else:
        state = checkpointer.restore(latest, exp.abstract_state, train_iter, exp.meta)
        logging.info('resumed from step %d in %s', latest, checkpointer.directory)
      summary = _loop(exp, state, train_step, train_iter, eval_data, checkpointer, workdir)
    state = summary.pop('state')
    if not summary['preempted']:
      summary['samples'] = _print_samples(exp, state.params, eval_data)
  return summary


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """--config.mode=eval: the latest checkpoint's validation NELBO with its standard error.

  Each of `eval.t_samples` passes over the validation batches draws a fresh antithetic t per
  row; the passes' spread gives the standard error of the Monte Carlo estimate. With
  `eval.discrete_steps` T, the discrete-time T-step bound is estimated the same way. The
  figures are logged and written to WORKDIR/eval_STEP.json.
  """
  config_lib.validate(config)
  mesh = sharding.make_mesh(config.mesh)
  tokenizer = data_lib.make_tokenizer(config.data.tokenizer)
  _, eval_data = _data(config, tokenizer, mesh, with_train=False)
  with sharding.use_mesh(mesh, config.logical_axis_rules):
    exp = build(config, mesh, tokenizer)
    with ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'),
                               read_only=True) as checkpointer:
      step = checkpointer.latest_step()
      if step is None:
        raise ckpt_lib.CheckpointError(f'no checkpoint in {checkpointer.directory} to evaluate.')
      mismatch = {k for k in ('model', 'tokenizer', 'mask_id', 'block_size')
                  if checkpointer.read_meta(step).get(k) != exp.meta.get(k)}
      if mismatch:
        raise ckpt_lib.CheckpointError(f'checkpoint {step} does not fit the config '
                                       f'({", ".join(sorted(mismatch))} differ).')
      params = checkpointer.restore_params(step, exp.abstract_state.params)
    # Counted on the global batches: processes may hold the same rows.
    tokens = sum(int(jnp.sum(global_batch(b, exp.batch_sharding)['valid'])) for b in eval_data)
    report = {'step': step, 't_samples': config.eval.t_samples, 'tokens': tokens}
    objective = config.train.objective
    bounds = {'autoregressive_nll' if objective == 'ar' else 'continuous': exp.eval_step}
    if exp.discrete_eval_step is not None:
      bounds[f'discrete_T{config.eval.discrete_steps}'] = exp.discrete_eval_step
    for name, eval_step in bounds.items():
      report[name] = eval_figures(objective, *evaluate(exp, params, eval_data, eval_step))
      logging.info('step %d, %s (%s): %s', step, name,
                   'exact' if objective == 'ar' else f'{config.eval.t_samples} t per row',
                   ', '.join(f'{k} {v:.4f}' for k, v in report[name].items()))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f'eval_{step}.json'), 'w', encoding='utf-8') as f:
      json.dump(report, f, indent=2)
  return report


def _print_samples(exp: Experiment, params, eval_data) -> list[str]:
  """Continues the first half of the first validation rows; logs and returns the texts."""
  n = exp.config.sampling.num_samples
  if not n:
    return []
  tok, s = exp.tokenizer, exp.config.sampling
  prompt_len, gen_length = _sample_lengths(exp.config)
  tokens = global_batch(eval_data[0], exp.batch_sharding)['tokens'][:, :prompt_len]
  key = jax.random.key(exp.config.seed)
  decode_fn = model_lib.make_decode_fn(model_lib.abstract_model(exp.model_config)[0])
  if exp.model_config.causal:
    cfg = autoregressive.DecodeConfig(mask_id=tok.mask_id, vocab_size=tok.vocab_size,
                                      eos_id=tok.eos_id, gen_length=gen_length,
                                      temperature=s.temperature)
    generated = autoregressive.generate(decode_fn, exp.model_config, params, tokens,
                                        jnp.ones_like(tokens, bool), key, cfg)
  else:
    canvas = jnp.concatenate([tokens, jnp.full((tokens.shape[0], gen_length), tok.mask_id)], 1)
    generated = sampling.sample(exp.logits_fn, params, canvas, key, exp.sampler_config,
                                prompt_len, decode_fn=decode_fn).tokens[:, prompt_len:]
  prompts = multihost_utils.process_allgather(tokens, tiled=True)[:n]
  completions = multihost_utils.process_allgather(generated, tiled=True)[:n]
  texts = []
  for i, (prompt_ids, completion_ids) in enumerate(zip(prompts, completions)):
    prompt, completion = tok.decode(prompt_ids), tok.decode(completion_ids)
    texts.append(prompt + completion)
    how = ('autoregressive' if exp.model_config.causal
           else f'{exp.sampler_config.sampler}, {exp.sampler_config.steps} steps')
    logging.info('sample %d (%s):\n%s[%s]', i, how, prompt, completion)
  return texts


def _loop(exp: Experiment, state, train_step, train_iter, eval_data, checkpointer, workdir):
  config, t = exp.config, exp.config.train
  start_step = int(state.step)
  writer = metrics_lib.MetricWriter(workdir, t.num_steps, start_step, t.progress_bar)
  # Block diffusion runs the noisy and the clean row side by side: twice the work per token.
  flops_per_token = exp.model_config.flops_per_token(config.data.seq_len) * (
      2 if block_size(config) else 1)
  peak = metrics_lib.peak_flops_per_device(t.peak_flops_per_device)
  tokens_per_step = t.batch_size * config.data.seq_len
  losses, evals = {}, {}
  interval_start, interval_steps = time.perf_counter(), 0

  def collect(step, metrics) -> dict:
    """Pulls a finished step's metrics; returns what to log at this step ({} if nothing)."""
    nonlocal interval_start, interval_steps
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    _check_finite(step, values, checkpointer)
    losses[step] = values['loss']
    interval_steps += 1
    writer.advance(step, values['loss'])
    if step % t.log_every and step != t.num_steps:
      return {}
    values.update(metrics_lib.throughput(interval_steps, time.perf_counter() - interval_start,
                                         tokens_per_step, flops_per_token, peak,
                                         jax.device_count()))
    values['device_memory_bytes'] = metrics_lib.device_memory_in_use()
    interval_start, interval_steps = time.perf_counter(), 0
    return values

  with _Preemption() as preemption:
    pending = None
    step = start_step
    while step < t.num_steps:
      batch = global_batch(_whole_rows(next(train_iter)), exp.batch_sharding)
      state, metrics = train_step(state, batch)  # dispatched; runs while we look at the last
      step += 1
      if pending is not None:
        writer.write(pending[0], collect(*pending))
      pending = (step, metrics)
      # Every process must agree on the step to stop at: across hosts orbax syncs the notice.
      stop = (preemption.requested if jax.process_count() == 1
              else checkpointer.reached_preemption(step))
      last = step == t.num_steps
      do_eval = step % t.eval_every == 0 or last
      do_save = step % t.checkpoint_every == 0 or stop or last
      if do_eval or do_save:
        values = collect(*pending)  # checked finite before anything is saved
        pending = None
        paused = time.perf_counter()
        if do_eval:
          evals[step], report = _eval_report(exp, state, eval_data)
          values.update(report)
        writer.write(step, values)
        if do_save:
          checkpointer.save(step, state, train_iter, exp.meta)
        interval_start += time.perf_counter() - paused
        if stop:
          logging.warning('stopped at step %d after a preemption notice; checkpoint saved', step)
          break
    checkpointer.wait()
  writer.close()
  return {'start_step': start_step, 'step': step, 'losses': losses, 'eval_nelbo': evals,
          'preempted': step < t.num_steps, 'state': state}


def _eval_report(exp, state, eval_data) -> tuple[float, dict]:
  """(the validation loss in nats, the figures to log) of the parameters and their EMA."""
  objective = exp.config.train.objective
  nats, stderr = evaluate(exp, state.params, eval_data)
  report = {f'eval_{k}': v for k, v in eval_figures(objective, nats, stderr).items()}
  if exp.config.train.ema_decay:
    ema = eval_figures(objective, *evaluate(exp, state.ema_params, eval_data))
    report.update({f'eval_ema_{k}': v for k, v in ema.items()})
  return nats, report


def _whole_rows(batch: dict) -> dict:
  """A training batch, checked to hold no partly padded row: the train step attends without
  a key mask (see build), which changes nothing for full rows and for rows of padding only
  (they score nothing)."""
  valid_BxL = np.asarray(batch['valid'], bool)
  if np.any(valid_BxL.any(axis=1) & ~valid_BxL.all(axis=1)):
    raise data_lib.DataError('a training batch has a partly padded row, but the train step '
                             'runs attention without a key mask; the pipeline must fill rows.')
  return batch
