r"""Generate text from a trained checkpoint, in the terminal or from Python.

  python -m dllm_jax.generate --workdir=DIR --prompt="def fibonacci(n):" --gen_length=128 \
      --steps=64 --block_length=32 --sampler=low_confidence --temperature=0 --num_samples=4

loads the latest checkpoint of a training workdir (or --checkpoint=PATH: a converted model or
run directory, a checkpoints directory or a step directory) and prints the completions;
--show_steps prints the canvas of the first sample as it denoises, step by step. From
Python (notebooks):

  model = generate.load(workdir='/tmp/llada_small')
  completions = generate.generate(model, ['def fibonacci(n):'], gen_length=64, steps=64)

Infilling: --infill (or `generate.infill`) takes text with masks, `[MASK]` for one masked
token and `[MASK:N]` for N, fills them and keeps every given token:

  python -m dllm_jax.generate --workdir=DIR --infill=$'def f(x):\n    [MASK:20]\n    return y'
"""

import contextlib
import dataclasses
import functools
import os
import re
import sys
from typing import Any

import jax
import numpy as np
from absl import app, flags

from dllm_jax import autoregressive
from dllm_jax import checkpoint as ckpt_lib
from dllm_jax import cli
from dllm_jax import diffusion
from dllm_jax import model as model_lib
from dllm_jax import sampling
from dllm_jax import sharding
from dllm_jax.config import DTYPES, MESH_AXES, SAMPLERS, ConfigError, base_config
from dllm_jax.data import make_tokenizer

MASK_GLYPH = '\u00b7'  # how a still-masked position looks in --show_steps
# In an infilling text, `[MASK]` is one masked token and `[MASK:N]` is N of them.
MASK_MARKER = re.compile(r'\[MASK(?::(\d+))?\]')


@dataclasses.dataclass
class Model:
  """A trained denoiser ready to sample from."""
  params: Any
  config: model_lib.ModelConfig
  tokenizer: Any
  step: int
  diffusion_schedule: diffusion.Schedule
  logits_fn: Any = None
  tokenizer_path: str = 'bytes'  # tokenizer_config.json (chat template) sits beside it
  mesh: Any = None  # parameters sharded over this mesh by `rules`; None: one device
  rules: Any = None
  block_size: int = 0  # a block diffusion model's block (config.diffusion.block_size); 0: none

  def __post_init__(self):
    graphdef = model_lib.abstract_model(self.config)[0]
    if self.logits_fn is None:
      self.logits_fn = model_lib.make_logits_fn(graphdef)
    self.decode_fn = model_lib.make_decode_fn(graphdef)  # causal decoding, block_cache

  def placed(self):
    """The context to run the model's computations in: its mesh and rules, if any."""
    return (sharding.use_mesh(self.mesh, self.rules) if self.mesh
            else contextlib.nullcontext())


@dataclasses.dataclass
class Completion:
  text: str  # the generated text, cut at the first EOS (or end-of-turn)
  tokens: np.ndarray  # the generated ids, uncut
  commit_step: np.ndarray  # the step at which each generated position was committed
  canvas: np.ndarray  # the whole row: the prompt as laid out (and filled), then `tokens`
  nfe: int  # the model calls this row used (an AR model: one per token)


def _resolve(workdir: str | None, checkpoint: str | None) -> tuple[str, int | None]:
  """(checkpoints directory, step or None for the latest)."""
  if bool(workdir) == bool(checkpoint):
    raise ckpt_lib.CheckpointError('give exactly one of --workdir and --checkpoint.')
  if workdir:
    return os.path.join(workdir, 'checkpoints'), None
  return ckpt_lib.locate(checkpoint)


def _tokenizer_path(spec: str, checkpoints_dir: str) -> str:
  """A tokenizer recorded relative to the run (as the converter does) or to the cwd."""
  beside = os.path.join(os.path.dirname(checkpoints_dir), spec)
  return beside if spec != 'bytes' and not os.path.isabs(spec) and os.path.exists(beside) else spec


def _placement(mesh_shape, config: model_lib.ModelConfig):
  """(mesh, rules, per-parameter shardings) for a (data, fsdp, tensor) shape, or one device."""
  _, abstract, axes = model_lib.abstract_model(config)
  if not mesh_shape:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return None, None, jax.tree.map(lambda _: device, abstract)
  mesh_config = base_config().mesh
  mesh_config.update(dict(zip(MESH_AXES, mesh_shape)))
  rules = base_config().logical_axis_rules
  mesh = sharding.make_mesh(mesh_config)
  return mesh, rules, sharding.tree_shardings(mesh, rules, axes, abstract)


def load(workdir: str | None = None, checkpoint: str | None = None, use_ema: bool = False,
         hf_dir: str | None = None, dtype: str | None = None,
         mesh_shape: tuple[int, int, int] | None = None) -> Model:
  """The latest checkpoint of `workdir`, a `checkpoint` path, or a Hugging Face LLaDA
  directory `hf_dir` read directly. On one device, or with `mesh_shape` (data, fsdp,
  tensor; one may be -1) sharded as it is read by the default logical rules.

  `dtype` ('bfloat16' or 'float32') sets the parameters' and activations' dtype; None keeps
  a checkpoint's own and reads `hf_dir` in bfloat16."""
  if dtype not in (None,) + DTYPES:
    raise ConfigError(f'dtype: must be one of {", ".join(DTYPES)}, got {dtype!r}.')
  if hf_dir:
    from dllm_jax.convert import llada  # pylint: disable=g-import-not-at-top
    dtype = dtype or 'bfloat16'
    config = llada.read_config(hf_dir, dtype)[0]
    mesh, rules, shardings = _placement(mesh_shape, config)
    params, config, tokenizer = llada.load_params(
        hf_dir, dtype, lambda path: functools.reduce(lambda t, k: t[k], path, shardings))
    return Model(params, config, tokenizer, 0, llada.LLADA_SCHEDULE,
                 tokenizer_path=os.path.join(hf_dir, 'tokenizer.json'), mesh=mesh, rules=rules)
  directory, step = _resolve(workdir, checkpoint)
  with ckpt_lib.Checkpointer(directory, read_only=True) as checkpointer:
    step = checkpointer.latest_step() if step is None else step
    if step is None or step not in checkpointer.all_steps():
      raise ckpt_lib.CheckpointError(f'no checkpoint {"" if step is None else step} in '
                                     f'{directory}; train first or give another path.')
    meta = checkpointer.read_meta(step)
    config = model_lib.ModelConfig(**meta['model'])
    if dtype:  # a runtime field: the restore casts the stored parameters to it
      config = dataclasses.replace(config, param_dtype=dtype, dtype=dtype)
    tokenizer_path = _tokenizer_path(meta['tokenizer'], directory)
    tokenizer = make_tokenizer(tokenizer_path)
    if tokenizer.mask_id != meta['mask_id']:
      raise ckpt_lib.CheckpointError(
          f'the tokenizer {meta["tokenizer"]!r} gives mask id {tokenizer.mask_id}, but the '
          f'checkpoint was trained with {meta["mask_id"]}.')
    mesh, rules, shardings = _placement(mesh_shape, config)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            model_lib.abstract_model(config)[1], shardings)
    params = checkpointer.restore_params(step, abstract, 'ema_params' if use_ema else 'params')
  schedule = diffusion.Schedule(**meta.get('schedule', {'kind': 'linear'}))
  return Model(params, config, tokenizer, step, schedule, tokenizer_path=tokenizer_path,
               mesh=mesh, rules=rules, block_size=meta.get('block_size', 0))


def generate(model: Model, prompts: list[str], **settings) -> list[Completion]:
  """Completes each prompt in one batch; see `generate_ids` for the settings."""
  return generate_ids(model, [model.tokenizer.encode(p) for p in prompts], **settings)


def _prompt_rows(tokenizer, encoded, attention_mask, bos: bool) -> tuple[np.ndarray, np.ndarray]:
  """(prompt rows [B, P], their attention mask): a list of id arrays left-padded to the
  longest, or a pre-padded [B, P] array and its mask, checked to be padded on the left. With
  `bos` (causal models, trained with BOS in front) each prompt starts with BOS."""
  if attention_mask is not None or (isinstance(encoded, np.ndarray) and encoded.ndim == 2):
    canvas = np.asarray(encoded, np.int32)
    valid = (np.ones(canvas.shape, bool) if attention_mask is None
             else np.asarray(attention_mask).astype(bool))
    if canvas.ndim != 2 or valid.shape != canvas.shape:
      raise sampling.SamplingError(f'attention_mask: shape {valid.shape} does not match the '
                                   f'prompts\' {canvas.shape}.')
    late = np.flatnonzero(np.any(valid[:, :-1] & ~valid[:, 1:], axis=1))
    if len(late):
      raise sampling.SamplingError(f'attention_mask: row {late[0]} has padding after its '
                                   'prompt; pad on the left, where generation cannot follow it.')
    if not bos:
      return canvas, valid
    encoded = [row[keep] for row, keep in zip(canvas, valid)]
  if bos:
    encoded = [np.concatenate([[tokenizer.bos_id], ids]) for ids in encoded]
  prompt_len = max(len(ids) for ids in encoded)
  canvas = np.full((len(encoded), prompt_len), tokenizer.pad_id, np.int32)
  valid = np.zeros(canvas.shape, bool)
  for row, ids in enumerate(encoded):
    canvas[row, prompt_len - len(ids):] = ids
    valid[row, prompt_len - len(ids):] = True
  return canvas, valid


def generate_ids(model: Model, encoded, *, attention_mask=None, gen_length: int = 128,
                 steps: int = 64, block_length: int | None = None,
                 sampler: str = 'low_confidence',
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 cfg_scale: float = 0.0, forbid_eos: bool = False, seed: int = 0,
                 time_grid: str = 'uniform', block_cache: bool = False,
                 fill_prompt_masks: bool = False, threshold: float = 0.9, factor: float = 1.0,
                 entropy_bound: float = 0.1, stop_at_eos: bool = False) -> list[Completion]:
  """Completes each tokenized prompt in one batch, every row's generation starting at the
  same position. `encoded` is a list of id arrays (left-padded here to the longest) or, as
  LLaDA's generate() takes it, a pre-padded [B, P] array with its `attention_mask` (True on
  tokens, padding on the left). Each Completion's `canvas` is that prompt row followed by
  the generated ids.

  One compiled program serves every prompt length within a `sampling.bucket` (the prompts
  are padded further on the left, out of attention: with rotary attention a no-op) and all
  settings but guidance on/off and `block_cache`, so a chat compiles once per bucket its
  prompts reach. `block_cache` reuses keys and values outside the current block within it
  (Fast-dLLM's dual cache; see `sampling.SamplerConfig`): faster, approximate. A prompt
  holding the mask token is refused unless `fill_prompt_masks`, which fills those positions
  too, as LLaDA's generate() does. The adaptive samplers ('threshold', 'factor',
  'entropy_bound') commit as many tokens per step as their bound allows and at least what
  `steps` would; `stop_at_eos` ends a row at its first EOS once all before it is decided.
  Each Completion counts the model calls its row used (`nfe`). `block_length` is 32 by
  default.

  A block diffusion model (`model.block_size` K) decodes its blocks of K left to right on an
  exact key/value cache (`sampling.SamplerConfig.block_causal`), each in steps / (gen_length
  / K) calls at most; `block_length` is K (None or K). Its cost per call does not grow with
  `gen_length`, which is then a maximum: with `stop_at_eos`, a row ends at its EOS.

  A causal (autoregressive) model decodes with its key/value cache: `temperature`, `top_k`,
  `top_p` and `forbid_eos` apply, the diffusion settings do not, and token i is "committed"
  at step i; as in its training, its input starts with BOS."""
  tok, causal = model.tokenizer, model.config.causal
  prompts, valid = _prompt_rows(tok, encoded, attention_mask, bos=causal)
  batch, prompt_len = prompts.shape
  if gen_length < 1:
    raise sampling.SamplingError(f'gen_length: must be >= 1, got {gen_length}.')
  if prompt_len + gen_length > model.config.max_seq_len:
    raise sampling.SamplingError(
        f'the prompt ({prompt_len} tokens) and gen_length ({gen_length}) exceed the model\'s '
        f'context of {model.config.max_seq_len} tokens (model.max_seq_len).')
  masks = int(np.sum(valid & (prompts == tok.mask_id)))
  if masks and not causal and not fill_prompt_masks:
    raise sampling.SamplingError(
        f'the prompt holds the mask token (id {tok.mask_id}) {masks} times; pass '
        'fill_prompt_masks=True to fill those positions too, as LLaDA\'s generate() does, or '
        'use infill.')
  width = min(sampling.bucket(prompt_len), model.config.max_seq_len - gen_length)
  if model.block_size:  # the prompt region holds whole blocks
    if block_length not in (None, model.block_size):
      raise sampling.SamplingError(
          f'block_length: this block diffusion model decodes blocks of {model.block_size}, '
          f'got {block_length}.')
    block_length = model.block_size
    width = -(-width // block_length) * block_length
    if width + gen_length > model.config.max_seq_len:
      raise sampling.SamplingError(
          f'the prompt ({prompt_len} tokens, {width} in whole blocks) and gen_length '
          f'({gen_length}) exceed the model\'s context of {model.config.max_seq_len} tokens.')
  pad = ((0, 0), (width - prompt_len, 0))
  canvas = np.pad(prompts, pad, constant_values=tok.pad_id)
  canvas_valid = np.pad(valid, pad)
  if causal:
    cfg = autoregressive.DecodeConfig(
        mask_id=tok.mask_id, vocab_size=tok.vocab_size, eos_id=tok.eos_id,
        gen_length=gen_length, temperature=temperature, top_k=top_k, top_p=top_p,
        forbid_eos=forbid_eos)
    with model.placed():
      generated = autoregressive.generate(model.decode_fn, model.config, model.params, canvas,
                                          canvas_valid, jax.random.key(seed), cfg)
    generated = np.asarray(jax.device_get(generated))
    commits = np.broadcast_to(np.arange(gen_length), generated.shape)
    nfe = np.full(batch, gen_length)
  else:
    cfg = sampling.SamplerConfig(
        mask_id=tok.mask_id, vocab_size=tok.vocab_size, eos_id=tok.eos_id, sampler=sampler,
        steps=steps, block_length=32 if block_length is None else block_length,
        temperature=temperature, top_k=top_k,
        top_p=top_p, cfg_scale=cfg_scale, forbid_eos=forbid_eos, time_grid=time_grid,
        schedule=model.diffusion_schedule, block_cache=block_cache,
        fill_prompt_masks=fill_prompt_masks, threshold=threshold, factor=factor,
        entropy_bound=entropy_bound, stop_at_eos=stop_at_eos,
        block_causal=bool(model.block_size))
    full = np.concatenate([canvas, np.full((batch, gen_length), tok.mask_id, np.int32)], 1)
    mask = np.concatenate([canvas_valid, np.ones((batch, gen_length), bool)], axis=1)
    with model.placed():
      out = sampling.sample(model.logits_fn, model.params, full, jax.random.key(seed), cfg,
                            width, mask, decode_fn=model.decode_fn)
    tokens, commit_steps, nfe = jax.device_get(out)
    prompts = tokens[:, width - prompt_len:width]  # prompt masks may have been filled
    generated, commits = tokens[:, width:], commit_steps[:, width:]
  completions = []
  for row in range(batch):
    stop = np.flatnonzero(np.isin(generated[row], tok.stop_ids))
    text = tok.decode(generated[row, :stop[0]] if len(stop) else generated[row])
    completions.append(Completion(text, generated[row], commits[row],
                                  np.concatenate([prompts[row], generated[row]]),
                                  int(nfe[row])))
  return completions


def infill_canvas(tokenizer, text: str) -> np.ndarray:
  """The ids of `text` with each `[MASK]` as one mask id and each `[MASK:N]` as N; the text
  between markers is tokenized piece by piece."""
  pieces, start, masks = [], 0, 0
  for marker in MASK_MARKER.finditer(text):
    count = int(marker.group(1) or 1)
    if count < 1:
      raise sampling.SamplingError(f'infill: {marker.group(0)} asks for no masks; use N >= 1.')
    pieces += [tokenizer.encode(text[start:marker.start()]), np.full(count, tokenizer.mask_id)]
    start, masks = marker.end(), masks + count
  if not masks:
    raise sampling.SamplingError('infill: the text has no [MASK] or [MASK:N] marker to fill.')
  pieces.append(tokenizer.encode(text[start:]))
  return np.concatenate(pieces).astype(np.int32)


def infill(model: Model, text: str, *, num_samples: int = 1, steps: int = 0,
           sampler: str = 'low_confidence', temperature: float = 0.0, top_k: int = 0,
           top_p: float = 1.0, cfg_scale: float = 0.0, forbid_eos: bool = False, seed: int = 0,
           time_grid: str = 'uniform', threshold: float = 0.9, factor: float = 1.0,
           entropy_bound: float = 0.1) -> list[Completion]:
  """`num_samples` fillings of the masks in `text` (see `infill_canvas`) in `steps` model
  calls (0: one per mask); every given token stays. The masks form one block, so the
  confidence samplers commit their surest positions first wherever they are. Each
  Completion holds the whole canvas; an EOS filled into a mask is left out of its text."""
  if model.config.causal or model.block_size:
    raise sampling.SamplingError('infill: needs a full-sequence diffusion model; this one '
                                 'writes left to right (' + (
                                     'autoregressive).' if model.config.causal else
                                     f'block diffusion, blocks of {model.block_size}).'))
  if num_samples < 1:
    raise sampling.SamplingError(f'num_samples: must be >= 1, got {num_samples}.')
  tok = model.tokenizer
  canvas = infill_canvas(tok, text)
  if len(canvas) > model.config.max_seq_len:
    raise sampling.SamplingError(
        f'infill: the canvas ({len(canvas)} tokens) exceeds the model\'s context of '
        f'{model.config.max_seq_len} tokens (model.max_seq_len).')
  cfg = sampling.SamplerConfig(
      mask_id=tok.mask_id, vocab_size=tok.vocab_size, eos_id=tok.eos_id, sampler=sampler,
      steps=steps or int(np.sum(canvas == tok.mask_id)), temperature=temperature, top_k=top_k,
      top_p=top_p, cfg_scale=cfg_scale, forbid_eos=forbid_eos, time_grid=time_grid,
      schedule=model.diffusion_schedule, threshold=threshold, factor=factor,
      entropy_bound=entropy_bound)
  # Padded on the right to a bucket, out of attention: texts of similar length share a program.
  width = min(sampling.bucket(len(canvas)), model.config.max_seq_len)
  padded = np.pad(canvas, (0, width - len(canvas)), constant_values=tok.pad_id)
  valid = np.arange(width) < len(canvas)
  with model.placed():
    out = sampling.sample(model.logits_fn, model.params, np.tile(padded, (num_samples, 1)),
                          jax.random.key(seed), cfg, 0, np.tile(valid, (num_samples, 1)))
  tokens, commits, nfe = jax.device_get(out)
  tokens, commits = tokens[:, :len(canvas)], commits[:, :len(canvas)]
  return [Completion(tok.decode(t), t, c, t, int(n)) for t, c, n in zip(tokens, commits, nfe)]


def parse_mesh(spec: str) -> tuple[int, int, int] | None:
  """'1x4x2' -> (1, 4, 2); '' -> None."""
  if not spec:
    return None
  try:
    sizes = tuple(int(s) for s in spec.lower().split('x'))
  except ValueError:
    sizes = ()
  if len(sizes) != 3:
    raise sampling.SamplingError(f'mesh: {spec!r} is not DATAxFSDPxTENSOR, e.g. 1x4x2.')
  return sizes


def render(tokenizer, tokens: np.ndarray, visible: np.ndarray) -> str:
  """Visible tokens decoded run by run; the others as MASK_GLYPH."""
  pieces, run = [], []
  for token, shown in zip(tokens.tolist(), visible.tolist()):
    if shown:
      run.append(token)
      continue
    if run:
      pieces.append(tokenizer.decode(run))
      run = []
    pieces.append(MASK_GLYPH)
  if run:
    pieces.append(tokenizer.decode(run))
  return ''.join(pieces)


def denoising_frames(tokenizer, completion: Completion, steps: int) -> list[str]:
  """The generated region after each step, as text with masks shown."""
  return [render(tokenizer, completion.tokens, completion.commit_step <= step)
          for step in range(steps)]


def define_sampler_flags():
  """--sampler and the adaptive samplers' bounds (shared with chat)."""
  flags.DEFINE_enum('sampler', 'low_confidence', SAMPLERS, 'The sampler: fixed-step '
                    '(ancestral, low_confidence, margin, entropy, random) or adaptive '
                    '(threshold, factor, entropy_bound: several tokens per call where sure).')
  flags.DEFINE_float('threshold', 0.9, 'threshold sampler: commit every position of the block '
                     'whose probability exceeds this.')
  flags.DEFINE_float('factor', 1.0, 'factor sampler: commit the n most probable while '
                     '(n + 1)(1 - p_n) < factor.')
  flags.DEFINE_float('entropy_bound', 0.1, 'entropy_bound sampler: commit the lowest-entropy '
                     'positions while their summed entropy, less the largest, stays within this.')


def sampler_settings(f) -> dict:
  """The keyword arguments of `generate_ids` that `define_sampler_flags` sets."""
  return dict(sampler=f.sampler, threshold=f.threshold, factor=f.factor,
              entropy_bound=f.entropy_bound)


def define_flags():
  """The command line; defined only when this module is the program."""
  cli.define_compilation_cache_flag()
  flags.DEFINE_string('workdir', None, 'A training workdir: its latest checkpoint.')
  flags.DEFINE_string('checkpoint', None, 'A converted model or run directory, a checkpoints '
                      'directory (its latest step) or a step directory.')
  flags.DEFINE_string('prompt', '', 'The text to continue.')
  flags.DEFINE_string('infill', '', 'Instead of --prompt: text whose [MASK] (one token) and '
                      '[MASK:N] (N tokens) markers are filled; --steps defaults to one per mask.')
  flags.DEFINE_integer('gen_length', 128, 'Tokens to generate.')
  flags.DEFINE_integer('steps', 64, 'Denoising steps (model calls).')
  flags.DEFINE_integer('block_length', None, 'Semi-autoregressive block length (must divide '
                       'gen_length; default 32; ignored by ancestral). A block diffusion '
                       'model decodes its own blocks.')
  define_sampler_flags()
  flags.DEFINE_bool('stop_at_eos', False, 'End a sample at its first EOS once everything '
                    'before it is decided (saves the remaining model calls).')
  flags.DEFINE_float('temperature', 0.0, '0 decodes greedily.')
  flags.DEFINE_integer('top_k', 0, 'Keep the k most likely tokens; 0 keeps all.')
  flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling mass; 1 keeps all.')
  flags.DEFINE_float('cfg_scale', 0.0, 'Classifier-free guidance weight.')
  flags.DEFINE_bool('forbid_eos', False, 'Never generate EOS.')
  flags.DEFINE_bool('block_cache', False, 'Reuse the keys and values outside the current '
                    'block for its steps (Fast-dLLM\'s dual cache): faster, approximate.')
  flags.DEFINE_integer('num_samples', 1, 'Completions of the prompt.')
  flags.DEFINE_integer('seed', 0, 'Random seed.')
  flags.DEFINE_bool('show_steps', False, 'Print the first sample as it denoises.')
  flags.DEFINE_bool('use_ema', False, 'Sample with the EMA parameters.')
  flags.DEFINE_string('mesh', '', 'Shard the model over DATAxFSDPxTENSOR devices, e.g. 1x4x2 '
                      '(one size may be -1); empty: one device.')
  flags.DEFINE_enum('dtype', None, list(DTYPES), 'Load the parameters in this dtype and '
                    'compute in it; default: the checkpoint\'s own.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_library_logs()
  f = flags.FLAGS
  cli.use_compilation_cache(f.compilation_cache)
  settings = dict(temperature=f.temperature, top_k=f.top_k, top_p=f.top_p,
                  cfg_scale=f.cfg_scale, forbid_eos=f.forbid_eos, seed=f.seed,
                  **sampler_settings(f))
  try:
    if f.num_samples < 1:
      raise sampling.SamplingError(f'num_samples: must be >= 1, got {f.num_samples}.')
    if f.infill and f.prompt:
      raise sampling.SamplingError('give --prompt (to continue) or --infill (to fill), not both.')
    if f.infill and f.stop_at_eos:
      raise sampling.SamplingError('stop_at_eos: --infill has no end to stop at; it fills the '
                                   'masks between given text.')
    if f.infill and f.block_cache:
      raise sampling.SamplingError('block_cache: --infill fills one block, the whole canvas, '
                                   'so there is nothing outside it to cache.')
    model = load(f.workdir, f.checkpoint, f.use_ema, dtype=f.dtype,
                 mesh_shape=parse_mesh(f.mesh))
    if f.infill:
      steps = f.steps if f['steps'].present else 0  # 0: one per mask
      completions = infill(model, f.infill, num_samples=f.num_samples, steps=steps, **settings)
    else:
      completions = generate(model, [f.prompt] * f.num_samples, gen_length=f.gen_length,
                             steps=f.steps, block_length=f.block_length,
                             block_cache=f.block_cache, stop_at_eos=f.stop_at_eos, **settings)
  except (sampling.SamplingError, ckpt_lib.CheckpointError, ConfigError,
          FileNotFoundError) as e:
    sys.exit(f'error: {e}')
  shown = '' if f.infill else f.prompt  # a completion holds the generation, a filling all
  if f.show_steps:
    first = completions[0]
    for step, frame in enumerate(denoising_frames(model.tokenizer, first, first.nfe)):
      print(f'--- step {step + 1}/{first.nfe}\n{shown}{frame}')
  for i, completion in enumerate(completions):
    print(f'=== sample {i} (checkpoint step {model.step}; {completion.nfe} model calls for '
          f'{len(completion.tokens)} tokens)\n{shown}{completion.text}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
