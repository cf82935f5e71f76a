r"""Generate text from a trained checkpoint, in the terminal or from Python.

  python -m dllm_jax.generate --workdir=DIR --prompt="def fibonacci(n):" --gen_length=128 \
      --steps=64 --block_length=32 --sampler=low_confidence --temperature=0 --num_samples=4

loads the latest checkpoint of a training workdir (or --checkpoint=PATH, a step directory or
a checkpoints directory) and prints the completions; --show_steps prints the canvas of the
first sample as it denoises, step by step. From Python (notebooks):

  model = generate.load(workdir='/tmp/llada_small')
  completions = generate.generate(model, ['def fibonacci(n):'], gen_length=64, steps=64)
"""

import dataclasses
import os
import sys
from typing import Any

import jax
import numpy as np
from absl import app, flags

from dllm_jax import checkpoint as ckpt_lib
from dllm_jax import diffusion
from dllm_jax import model as model_lib
from dllm_jax import sampling
from dllm_jax.config import SAMPLERS
from dllm_jax.data import make_tokenizer

MASK_GLYPH = '\u00b7'  # how a still-masked position looks in --show_steps

# One compiled sampler per (network, settings, prompt length, shape).
_sample = jax.jit(sampling.sample, static_argnums=(0, 4, 5))


@dataclasses.dataclass
class Model:
  """A trained denoiser ready to sample from."""
  params: Any
  config: model_lib.ModelConfig
  tokenizer: Any
  step: int
  diffusion_schedule: diffusion.Schedule
  logits_fn: Any = None

  def __post_init__(self):
    if self.logits_fn is None:
      self.logits_fn = model_lib.make_logits_fn(model_lib.abstract_model(self.config)[0])


@dataclasses.dataclass
class Completion:
  text: str  # the generated text, cut at the first EOS
  tokens: np.ndarray  # the generated ids, uncut
  commit_step: np.ndarray  # the step at which each generated position was committed


def _resolve(workdir: str | None, checkpoint: str | None) -> tuple[str, int | None]:
  """(checkpoints directory, step or None for the latest)."""
  if bool(workdir) == bool(checkpoint):
    raise ckpt_lib.CheckpointError('give exactly one of --workdir and --checkpoint.')
  if workdir:
    return os.path.join(workdir, 'checkpoints'), None
  path = os.path.abspath(checkpoint.rstrip('/'))
  if os.path.basename(path).isdigit():
    return os.path.dirname(path), int(os.path.basename(path))
  return path, None


def load(workdir: str | None = None, checkpoint: str | None = None,
         use_ema: bool = False) -> Model:
  """The parameters of a checkpoint (the latest of `workdir`'s, or `checkpoint`) on one device."""
  directory, step = _resolve(workdir, checkpoint)
  with ckpt_lib.Checkpointer(directory, read_only=True) as checkpointer:
    step = checkpointer.latest_step() if step is None else step
    if step is None or step not in checkpointer.all_steps():
      raise ckpt_lib.CheckpointError(f'no checkpoint {"" if step is None else step} in '
                                     f'{directory}; train first or give another path.')
    meta = checkpointer.read_meta(step)
    config = model_lib.ModelConfig(**meta['model'])
    tokenizer = make_tokenizer(meta['tokenizer'])
    if tokenizer.mask_id != meta['mask_id']:
      raise ckpt_lib.CheckpointError(
          f'the tokenizer {meta["tokenizer"]!r} gives mask id {tokenizer.mask_id}, but the '
          f'checkpoint was trained with {meta["mask_id"]}.')
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                            model_lib.abstract_model(config)[1])
    params = checkpointer.restore_params(step, abstract, 'ema_params' if use_ema else 'params')
  schedule = diffusion.Schedule(**meta.get('schedule', {'kind': 'linear'}))
  return Model(params, config, tokenizer, step, schedule)


def generate(model: Model, prompts: list[str], *, gen_length: int = 128, steps: int = 64,
             block_length: int = 32, sampler: str = 'low_confidence',
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             cfg_scale: float = 0.0, forbid_eos: bool = False, seed: int = 0,
             time_grid: str = 'uniform') -> list[Completion]:
  """Completes each prompt in one batch; prompts of different lengths are left-padded."""
  tok = model.tokenizer
  encoded = [tok.encode(p) for p in prompts]
  prompt_len = max(len(e) for e in encoded)
  if gen_length < 1:
    raise sampling.SamplingError(f'gen_length: must be >= 1, got {gen_length}.')
  if prompt_len + gen_length > model.config.max_seq_len:
    raise sampling.SamplingError(
        f'the prompt ({prompt_len} tokens) and gen_length ({gen_length}) exceed the model\'s '
        f'context of {model.config.max_seq_len} tokens (model.max_seq_len).')
  cfg = sampling.SamplerConfig(
      mask_id=tok.mask_id, vocab_size=tok.vocab_size, eos_id=tok.eos_id, sampler=sampler,
      steps=steps, block_length=block_length, temperature=temperature, top_k=top_k,
      top_p=top_p, cfg_scale=cfg_scale, forbid_eos=forbid_eos, time_grid=time_grid,
      schedule=model.diffusion_schedule)
  sampling.validate(cfg, prompt_len + gen_length, prompt_len)
  canvas = np.full((len(prompts), prompt_len + gen_length), tok.mask_id, np.int32)
  attention_mask = np.ones(canvas.shape, bool)
  for row, ids in enumerate(encoded):
    canvas[row, :prompt_len - len(ids)] = tok.pad_id
    attention_mask[row, :prompt_len - len(ids)] = False
    canvas[row, prompt_len - len(ids):prompt_len] = ids
  out = _sample(model.logits_fn, model.params, canvas, jax.random.key(seed), cfg, prompt_len,
                None if attention_mask.all() else attention_mask)
  tokens, commits = jax.device_get(out)
  completions = []
  for row in range(len(prompts)):
    generated = tokens[row, prompt_len:]
    eos = np.flatnonzero(generated == tok.eos_id)
    text = tok.decode(generated[:eos[0]] if len(eos) else generated)
    completions.append(Completion(text, generated, commits[row, prompt_len:]))
  return completions


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


_WORKDIR = flags.DEFINE_string('workdir', None, 'A training workdir: its latest checkpoint.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'A checkpoint step directory, or a '
                                  'checkpoints directory (its latest step).')
_PROMPT = flags.DEFINE_string('prompt', '', 'The text to continue.')
_GEN_LENGTH = flags.DEFINE_integer('gen_length', 128, 'Tokens to generate.')
_STEPS = flags.DEFINE_integer('steps', 64, 'Denoising steps (model calls).')
_BLOCK_LENGTH = flags.DEFINE_integer('block_length', 32, 'Semi-autoregressive block length '
                                     '(must divide gen_length); ignored by ancestral.')
_SAMPLER = flags.DEFINE_enum('sampler', 'low_confidence', SAMPLERS, 'The sampler.')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.0, '0 decodes greedily.')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Keep the k most likely tokens; 0 keeps all.')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling mass; 1 keeps all.')
_CFG_SCALE = flags.DEFINE_float('cfg_scale', 0.0, 'Classifier-free guidance weight.')
_FORBID_EOS = flags.DEFINE_bool('forbid_eos', False, 'Never generate EOS.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 1, 'Completions of the prompt.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')
_SHOW_STEPS = flags.DEFINE_bool('show_steps', False, 'Print the first sample as it denoises.')
_USE_EMA = flags.DEFINE_bool('use_ema', False, 'Sample with the EMA parameters.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    if _NUM_SAMPLES.value < 1:
      raise sampling.SamplingError(f'num_samples: must be >= 1, got {_NUM_SAMPLES.value}.')
    model = load(_WORKDIR.value, _CHECKPOINT.value, _USE_EMA.value)
    completions = generate(
        model, [_PROMPT.value] * _NUM_SAMPLES.value, gen_length=_GEN_LENGTH.value,
        steps=_STEPS.value, block_length=_BLOCK_LENGTH.value, sampler=_SAMPLER.value,
        temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value,
        cfg_scale=_CFG_SCALE.value, forbid_eos=_FORBID_EOS.value, seed=_SEED.value)
  except (sampling.SamplingError, ckpt_lib.CheckpointError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
  if _SHOW_STEPS.value:
    for step, frame in enumerate(denoising_frames(model.tokenizer, completions[0],
                                                  _STEPS.value)):
      print(f'--- step {step + 1}/{_STEPS.value}\n{_PROMPT.value}{frame}')
  for i, completion in enumerate(completions):
    print(f'=== sample {i} (checkpoint step {model.step})\n{_PROMPT.value}{completion.text}')


if __name__ == '__main__':
  app.run(main)
