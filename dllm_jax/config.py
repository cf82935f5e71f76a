"""The base experiment config and its validation.

Every key any module reads lives here with its default; files in `configs/` start from
`base_config()` and change values, never add keys. `validate()` turns a bad value into one
`ConfigError` line naming the field and what to do, before anything is built.
"""

import ml_collections

SCHEDULES = ('linear', 'cosine', 'polynomial')
REMAT_POLICIES = ('none', 'full', 'dots', 'dots_with_no_batch_dims')
ATTENTION_IMPLS = ('xla', 'cudnn')
DTYPES = ('float32', 'bfloat16')
DATA_SOURCES = ('text_files', 'tfds', 'chat_jsonl')
OBJECTIVES = ('elbo', 'sft', 'ar')
MODES = ('train', 'eval')
# ancestral, then the remasking samplers: fixed schedules, then adaptive ones (sampling.py).
SAMPLERS = ('ancestral', 'low_confidence', 'margin', 'entropy', 'random', 'threshold', 'factor',
            'entropy_bound')
MESH_AXES = ('data', 'fsdp', 'tensor')


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field."""


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mode = 'train'

  c.model = ml_collections.ConfigDict(dict(
      # 0: the tokenizer's vocabulary rounded up to `vocab_multiple` (set by the trainer).
      vocab_size=0,
      vocab_multiple=128,
      d_model=256,
      n_layers=4,
      n_heads=4,
      n_kv_heads=4,
      head_dim=0,  # 0: d_model // n_heads
      mlp_dim=1024,
      # The longest canvas (prompt + generation) the model is meant for; RoPE has no hard limit.
      max_seq_len=2048,
      rope_theta=10000.0,
      norm_eps=1e-5,
      init_std=0.02,
      causal=False,
      param_dtype='float32',
      dtype='float32',
      scan_layers=True,
      remat_policy='none',
      attention_impl='xla',
  ))

  c.diffusion = ml_collections.ConfigDict(dict(
      schedule='linear',
      schedule_power=2.0,  # k of the polynomial schedule alpha(t) = 1 - t^k
      eps=1e-4,  # alpha is clipped to [eps, 1 - eps] as in MD4
      # Block diffusion (BD3-LM): rows are denoised in blocks of this many tokens, each from
      # the clean blocks before it, and decoded block by block with an exact key/value cache.
      # 0 (or data.seq_len): one block, the full-sequence model. 1: an autoregressive model.
      block_size=0,
      # [beta, omega]: training draws t from this interval only (BD3-LM's clipped masking
      # rates: less variance, no longer the NELBO); validation always uses [0, 1].
      t_range=(0.0, 1.0),
  ))

  c.data = ml_collections.ConfigDict(dict(
      source='text_files',
      # text_files: a glob, a directory, or '' for the Python standard library's source tree;
      # chat_jsonl: a glob of JSONL conversations (for train.objective='sft').
      files='',
      validation_fraction=0.02,
      tfds_name='',  # for source='tfds', e.g. 'tiny_shakespeare' or 'lm1b'
      text_key='text',
      train_split='train',
      eval_split='validation',
      data_dir='',  # '' -> ~/.cache/dllm_jax/tensorflow_datasets
      tokenizer='bytes',  # 'bytes' or a path to a Hugging Face tokenizer.json
      seq_len=256,
      shuffle_seed=0,
  ))

  c.train = ml_collections.ConfigDict(dict(
      # 'elbo': pre-training on text; 'sft': fine-tuning on chat_jsonl conversations, the
      # prompt never masked and the loss on the answer only (LLaDA's SFT); 'ar': the
      # autoregressive baseline (next-token cross-entropy; needs model.causal=True).
      objective='elbo',
      # A checkpoint whose parameters start a new run (a converted LLaDA model, a workdir
      # or a checkpoint path); '' starts from random weights. Ignored when resuming.
      init_from='',
      batch_size=32,  # global, across all processes and microbatches
      microbatches=1,
      num_steps=1000,
      learning_rate=1e-3,
      warmup_steps=100,
      min_lr_ratio=0.1,
      weight_decay=0.1,
      b1=0.9,
      b2=0.95,
      adam_eps=1e-8,
      grad_clip=1.0,
      ema_decay=0.0,  # 0 disables the EMA of parameters
      # Decay min(ema_decay, (1 + t) / (10 + t)) at step t, so that a short run's EMA is not
      # mostly the random init (a 0.999 EMA keeps 37% of it after 1000 steps).
      ema_warmup=False,
      log_every=10,
      eval_every=200,
      eval_batches=8,
      checkpoint_every=500,
      keep_checkpoints=3,
      async_checkpointing=True,
      # Peak FLOP/s of one device for MFU; 0 looks the device up in metrics.PEAK_FLOPS.
      peak_flops_per_device=0.0,
      progress_bar=True,
  ))

  # Validation, during training (every train.eval_every steps) and of the latest checkpoint
  # with --config.mode=eval: the NELBO with its standard error.
  c.eval = ml_collections.ConfigDict(dict(
      t_samples=8,  # antithetic draws of t per sequence (>= 2, for the standard error)
      # T of the discrete-time T-step bound also reported by --config.mode=eval; 0 skips it.
      discrete_steps=128,
  ))

  # The samples a training run prints at its end: each continues the first half of a
  # validation row for the second half, in one block.
  c.sampling = ml_collections.ConfigDict(dict(
      num_samples=3,  # 0: none
      # Ancestral at temperature 1 shows what a small model learned; greedy confidence-based
      # remasking makes weak models commit the likeliest byte (a space) everywhere.
      sampler='ancestral',
      steps=32,
      temperature=1.0,
      gen_length=0,  # tokens after the half-row prompt; 0: the row's second half
      # semi-autoregressive blocks (0: one block; ignored by ancestral); a block diffusion
      # model decodes its own blocks (diffusion.block_size)
      block_length=0,
  ))

  # Sizes of the ('data', 'fsdp', 'tensor') mesh axes; one may be -1 for "the rest".
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Logical axis name -> mesh axes (a name, a tuple of names, or None for replicated).
  c.logical_axis_rules = (
      ('activation_batch', ('data', 'fsdp')),
      ('activation_length', None),
      ('activation_embed', None),
      ('activation_heads', 'tensor'),
      ('activation_mlp', 'tensor'),
      ('activation_vocab', 'tensor'),
      ('layers', None),
      ('vocab', 'tensor'),
      ('embed', 'fsdp'),
      ('heads', 'tensor'),
      ('kv_heads', 'tensor'),
      ('head_dim', None),
      ('mlp', 'tensor'),
      ('norm', None),
  )

  c.distributed = ml_collections.ConfigDict(dict(
      # Call jax.distributed.initialize(); on Cloud TPU VMs and SLURM the arguments are found
      # automatically, elsewhere give them here.
      initialize=False,
      coordinator_address='',
      num_processes=0,
      process_id=-1,
  ))
  return c


def _fail(field, message):
  raise ConfigError(f'config.{field}: {message}')


def _check_choice(config, field, choices):
  value = config
  for part in field.split('.'):
    value = value[part]
  if value not in choices:
    _fail(field, f'{value!r} is not one of {", ".join(map(repr, choices))}.')


def _check_positive(config, fields):
  for field in fields:
    value = config
    for part in field.split('.'):
      value = value[part]
    if not value > 0:
      _fail(field, f'must be > 0, got {value!r}.')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first value that cannot work."""
  base = base_config()
  _check_keys(base, config, '')
  m, d, t = config.model, config.data, config.train
  _check_choice(config, 'mode', MODES)
  _check_choice(config, 'model.param_dtype', DTYPES)
  _check_choice(config, 'model.dtype', DTYPES)
  _check_choice(config, 'model.remat_policy', REMAT_POLICIES)
  _check_choice(config, 'model.attention_impl', ATTENTION_IMPLS)
  _check_choice(config, 'diffusion.schedule', SCHEDULES)
  _check_choice(config, 'data.source', DATA_SOURCES)
  _check_choice(config, 'sampling.sampler', SAMPLERS)
  _check_choice(config, 'train.objective', OBJECTIVES)
  if (t.objective == 'sft') != (d.source == 'chat_jsonl'):
    _fail('train.objective', f"'sft' goes with data.source='chat_jsonl' and only with it; got "
          f'{t.objective!r} with {d.source!r}.')
  if (t.objective == 'ar') != bool(m.causal):
    _fail('model.causal', f"must be True exactly when train.objective='ar'; got causal="
          f'{m.causal} with {t.objective!r}.')
  if not d.tokenizer:
    _fail('data.tokenizer', "is empty; give 'bytes' or the path of a Hugging Face tokenizer.json.")
  if t.objective == 'sft' and d.tokenizer == 'bytes':
    _fail('data.tokenizer', "train.objective='sft' needs a tokenizer.json with a chat template "
          'in the tokenizer_config.json beside it.')
  _check_positive(config, [
      'model.d_model', 'model.n_layers', 'model.n_heads', 'model.n_kv_heads', 'model.mlp_dim',
      'model.max_seq_len', 'model.rope_theta', 'model.norm_eps', 'model.vocab_multiple',
      'diffusion.schedule_power',
      'data.seq_len', 'train.batch_size', 'train.microbatches', 'train.num_steps',
      'train.learning_rate', 'train.log_every', 'train.eval_every', 'train.eval_batches',
      'train.checkpoint_every', 'train.keep_checkpoints', 'sampling.steps'])
  for field in ('sampling.gen_length', 'sampling.block_length'):
    section, key = field.split('.')
    if config[section][key] < 0:
      _fail(field, f'must be >= 0, got {config[section][key]}.')
  if config.eval.t_samples < 2:
    _fail('eval.t_samples', f'must be >= 2 (for a standard error), got {config.eval.t_samples}.')
  if config.eval.discrete_steps < 0:
    _fail('eval.discrete_steps', f'must be >= 0, got {config.eval.discrete_steps}.')
  if config.sampling.num_samples < 0:
    _fail('sampling.num_samples', f'must be >= 0, got {config.sampling.num_samples}.')
  if m.n_heads % m.n_kv_heads:
    _fail('model.n_kv_heads', f'must divide model.n_heads={m.n_heads}, got {m.n_kv_heads}.')
  if not m.head_dim and m.d_model % m.n_heads:
    _fail('model.head_dim', f'is 0 (d_model // n_heads) but d_model={m.d_model} is not '
          f'divisible by n_heads={m.n_heads}; set it explicitly.')
  if (m.head_dim or m.d_model // m.n_heads) % 2:
    _fail('model.head_dim', 'must be even for rotary embeddings.')
  if not 0 < config.diffusion.eps < 0.5:
    _fail('diffusion.eps', f'must be in (0, 0.5), got {config.diffusion.eps}.')
  block_size = config.diffusion.block_size
  if block_size < 0 or block_size and d.seq_len % block_size:
    _fail('diffusion.block_size', f'must be 0 or divide data.seq_len={d.seq_len}, got '
          f'{block_size}.')
  if 0 < block_size < d.seq_len and t.objective != 'elbo':
    _fail('diffusion.block_size', f"block diffusion trains with train.objective='elbo', not "
          f'{t.objective!r}.')
  t_range = tuple(config.diffusion.t_range)
  if len(t_range) != 2 or not 0 <= t_range[0] <= t_range[1] <= 1 or t_range[1] == 0:
    _fail('diffusion.t_range', f'must be (beta, omega) with 0 <= beta <= omega <= 1 and '
          f'omega > 0, got {t_range}.')
  if d.source == 'tfds' and not d.tfds_name:
    _fail('data.tfds_name', "is empty but data.source='tfds'; name a TFDS dataset.")
  if not 0 < d.validation_fraction < 1:
    _fail('data.validation_fraction', f'must be in (0, 1), got {d.validation_fraction}.')
  if t.batch_size % t.microbatches:
    _fail('train.microbatches', f'must divide train.batch_size={t.batch_size}, got '
          f'{t.microbatches}.')
  if not 0 <= t.warmup_steps <= t.num_steps:
    _fail('train.warmup_steps', f'must be in [0, train.num_steps={t.num_steps}], got '
          f'{t.warmup_steps}.')
  if not 0 <= t.ema_decay < 1:
    _fail('train.ema_decay', f'must be in [0, 1), got {t.ema_decay}.')
  if not 0 <= t.min_lr_ratio <= 1:
    _fail('train.min_lr_ratio', f'must be in [0, 1], got {t.min_lr_ratio}.')
  for axis in MESH_AXES:
    if config.mesh[axis] == 0 or config.mesh[axis] < -1:
      _fail(f'mesh.{axis}', f'must be a positive size or -1, got {config.mesh[axis]}.')
  if sum(config.mesh[a] == -1 for a in MESH_AXES) > 1:
    _fail('mesh', 'at most one axis may be -1.')
  for rule in config.logical_axis_rules:
    targets = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],)
    for target in targets:
      if target is not None and target not in MESH_AXES:
        _fail('logical_axis_rules', f'{rule[0]!r} maps to unknown mesh axis {target!r}; '
              f'the mesh axes are {MESH_AXES}.')


def _check_keys(base, config, prefix):
  """Keys the code never reads are typos: refuse them rather than ignore them."""
  for key in config.keys():
    if key not in base:
      _fail(prefix + key, 'is not a known field (see dllm_jax/config.py).')
    if isinstance(base[key], ml_collections.ConfigDict):
      _check_keys(base[key], config[key], f'{prefix}{key}.')
