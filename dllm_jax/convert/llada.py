r"""Hugging Face LLaDA checkpoints (LLaDA-8B-Base / -Instruct, any size) -> dllm_jax.

  python -m dllm_jax.convert.llada --hf_dir=PATH --out=DIR [--dtype=bfloat16]

reads `config.json` and the `*.safetensors` weights (one file, or shards listed in
`model.safetensors.index.json`), checks every tensor's name and shape before reading any
data, and writes DIR/checkpoints/0 (parameters only) plus DIR/tokenizer/ (tokenizer.json and
tokenizer_config.json), which `dllm_jax.generate`, `dllm_jax.chat` and fine-tuning
(`train.init_from`) load. Tensors are read and written one at a time, each layer's apart
(they are stacked on device when loaded): peak host memory is about twice the largest single
tensor (the 1 GB embedding for LLaDA-8B; see BENCHMARKS.md), less than one shard and never
the whole model. The checkpoint appears under its final name only once it is complete.

`load_params(hf_dir)` reads the same weights straight from the Hugging Face directory.

Layout: HF linear weights are [out, in]; ours are [in, ...] with heads split out, e.g.
q_proj [n_heads * head_dim, d_model] -> [d_model, n_heads, head_dim], stacked over layers.
"""

import ctypes
import dataclasses
import json
import os
import shutil
import sys
from typing import Iterator

import jax.numpy as jnp
import numpy as np
from absl import app, flags
from safetensors import safe_open

from dllm_jax import cli
from dllm_jax import diffusion
from dllm_jax import model as model_lib
from dllm_jax.data.tokenizers import HFTokenizer

PREFIX = 'model.transformer.'
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json')
# LLaDA's pre-training masks with probability (1 - 1e-3) t + 1e-3.
LLADA_SCHEDULE = diffusion.Schedule('linear', eps=1e-3)


class ConversionError(ValueError):
  """A Hugging Face directory that is not a LLaDA checkpoint this code can convert."""


def read_config(hf_dir: str, dtype: str = 'bfloat16') -> tuple[model_lib.ModelConfig, dict]:
  """The network config from config.json, and config.json itself."""
  path = os.path.join(hf_dir, 'config.json')
  if not os.path.isfile(path):
    raise ConversionError(f'no config.json in {hf_dir}.')
  with open(path, encoding='utf-8') as f:
    hf = json.load(f)
  missing = [k for k in ('d_model', 'n_layers', 'n_heads', 'mlp_hidden_size', 'vocab_size',
                         'mask_token_id') if k not in hf]
  if missing:
    raise ConversionError(f'{path} lacks {", ".join(missing)}: is this a LLaDA checkpoint?')
  unsupported = {k: hf[k] for k, ok in (
      ('include_bias', False), ('include_qkv_bias', False), ('weight_tying', False),
      ('alibi', False), ('scale_logits', False), ('attention_layer_norm', False),
      ('input_emb_norm', False), ('rope', True), ('layer_norm_type', 'rms'),
      ('activation_type', 'silu'), ('block_type', 'llama')) if k in hf and hf[k] != ok}
  if unsupported:
    raise ConversionError(f'{path}: unsupported LLaDA options {unsupported}.')
  if hf['d_model'] % hf['n_heads']:
    raise ConversionError(f'{path}: d_model {hf["d_model"]} is not a multiple of n_heads.')
  config = model_lib.ModelConfig(
      vocab_size=hf.get('embedding_size') or hf['vocab_size'], d_model=hf['d_model'],
      n_layers=hf['n_layers'], n_heads=hf['n_heads'],
      n_kv_heads=hf.get('n_kv_heads') or hf['n_heads'], head_dim=hf['d_model'] // hf['n_heads'],
      mlp_dim=hf['mlp_hidden_size'], max_seq_len=hf.get('max_sequence_length', 4096),
      rope_theta=float(hf.get('rope_theta', 10000.0)),
      norm_eps=float(hf.get('rms_norm_eps', 1e-5)), param_dtype=dtype, dtype=dtype)
  return config, hf


def _linear(ours):
  """How an HF [out, in] weight becomes ours: transpose, then split the out dim."""
  return lambda w: np.ascontiguousarray(w.T).reshape(ours)


def tensor_plan(config: model_lib.ModelConfig):
  """[(our path, HF names in layer order, HF shape, HF -> ours)] for every parameter."""
  d, h, k, hd, f, v = (config.d_model, config.n_heads, config.n_kv_heads, config.head_dim,
                       config.mlp_dim, config.vocab_size)
  layer = {  # ours: (HF name, HF shape, our per-layer shape)
      'attn_norm': ('attn_norm', (d,), (d,)),
      'q_proj': ('q_proj', (h * hd, d), (d, h, hd)),
      'k_proj': ('k_proj', (k * hd, d), (d, k, hd)),
      'v_proj': ('v_proj', (k * hd, d), (d, k, hd)),
      'attn_out': ('attn_out', (d, h * hd), (h, hd, d)),
      'ff_norm': ('ff_norm', (d,), (d,)),
      'ff_proj': ('ff_proj', (f, d), (d, f)),
      'up_proj': ('up_proj', (f, d), (d, f)),
      'ff_out': ('ff_out', (d, f), (f, d)),
  }
  plan = [(('wte',), [f'{PREFIX}wte.weight'], (v, d), lambda w: w),
          (('ln_f',), [f'{PREFIX}ln_f.weight'], (d,), lambda w: w),
          (('lm_head',), [f'{PREFIX}ff_out.weight'], (v, d), lambda w: np.ascontiguousarray(w.T))]
  for ours, (name, hf_shape, our_shape) in layer.items():
    fn = (lambda w: w) if len(hf_shape) == 1 else _linear(our_shape)
    names = [f'{PREFIX}blocks.{i}.{name}.weight' for i in range(config.n_layers)]
    plan.append((('blocks', ours), names, hf_shape, fn))
  return plan


def tensor_files(hf_dir: str) -> dict[str, str]:
  """HF tensor name -> the safetensors file that holds it."""
  index = os.path.join(hf_dir, 'model.safetensors.index.json')
  if os.path.isfile(index):
    with open(index, encoding='utf-8') as f:
      weight_map = json.load(f)['weight_map']
    return {name: os.path.join(hf_dir, file) for name, file in weight_map.items()}
  files = sorted(f for f in os.listdir(hf_dir) if f.endswith('.safetensors'))
  if not files:
    raise ConversionError(f'no *.safetensors in {hf_dir}.')
  located = {}
  for file in files:
    with safe_open(os.path.join(hf_dir, file), framework='numpy') as f:
      located.update({name: os.path.join(hf_dir, file) for name in f.keys()})
  return located


def check_tensors(hf_dir: str, config: model_lib.ModelConfig) -> dict[str, str]:
  """Every expected tensor present with its shape, nothing else; reads headers only."""
  located = tensor_files(hf_dir)
  expected = {name: shape for _, names, shape, _ in tensor_plan(config) for name in names}
  shapes = {}
  for file in sorted(set(located.values())):
    if not os.path.isfile(file):
      raise ConversionError(f'missing weight file {file}.')
    with safe_open(file, framework='numpy') as f:
      shapes.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
  problems = []
  missing = sorted(set(expected) - set(shapes))
  unexpected = sorted(set(shapes) - set(expected))
  wrong = sorted(f'{n} {shapes[n]} (expected {expected[n]})' for n in expected
                 if n in shapes and shapes[n] != expected[n])
  for label, names in (('missing', missing), ('unexpected', unexpected), ('wrong shape', wrong)):
    if names:
      problems.append(f'{label}: {", ".join(names[:20])}'
                      + (f' and {len(names) - 20} more' if len(names) > 20 else ''))
  if problems:
    raise ConversionError(f'{hf_dir} does not match its config.json: ' + '; '.join(problems))
  return located


def iter_tensors(config: model_lib.ModelConfig,
                 located: dict[str, str]) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
  """(our path, array) for every tensor, one at a time, in our layout and dtype.

  Block tensors come per layer, as ('layers', 'i', name): the caller stacks them (on device)
  or stores them so (a converted checkpoint), never holding more than one on the host.
  """
  dtype = jnp.dtype(config.param_dtype)
  # Told apart by path, not by the number of names: with one layer both have one name.
  plan = tensor_plan(config)
  for path, names, _, fn in [p for p in plan if p[0][0] != 'blocks']:
    yield path, _read(located, names[0], fn, dtype)
  for i in range(config.n_layers):
    for path, names, _, fn in [p for p in plan if p[0][0] == 'blocks']:
      yield ('layers', str(i), path[-1]), _read(located, names[i], fn, dtype)


def _read(located, name, fn, dtype) -> np.ndarray:
  # Opened per tensor: a file left mapped would keep every page it ever read resident.
  with safe_open(located[name], framework='numpy') as f:
    return np.ascontiguousarray(fn(f.get_tensor(name)).astype(dtype))


def check_tokenizer(hf_dir: str, hf_config: dict) -> HFTokenizer:
  path = os.path.join(hf_dir, 'tokenizer.json')
  if not os.path.isfile(path):
    raise ConversionError(f'no tokenizer.json in {hf_dir}.')
  tokenizer = HFTokenizer(path)
  if tokenizer.mask_id != hf_config['mask_token_id']:
    raise ConversionError(
        f'config.json says mask_token_id={hf_config["mask_token_id"]}, but the tokenizer\'s '
        f'<|mdm_mask|> is {tokenizer.token_id("<|mdm_mask|>")}: the wrong mask token.')
  return tokenizer


def _release_freed_memory() -> None:
  """Hands memory freed after a save back to the OS (glibc keeps it otherwise)."""
  try:
    ctypes.CDLL('libc.so.6').malloc_trim(0)
  except (OSError, AttributeError):  # not glibc: nothing to do
    pass


def _nest(path, value):
  for key in reversed(path):
    value = {key: value}
  return value


def convert(hf_dir: str, out: str, dtype: str = 'bfloat16') -> str:
  """Writes OUT/checkpoints/0 and OUT/tokenizer/; returns the checkpoint directory."""
  from orbax.checkpoint.experimental.v1 import partial  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint import JsonCheckpointHandler, Checkpointer, args  # pylint: disable=g-import-not-at-top,g-multiple-import
  config, hf_config = read_config(hf_dir, dtype)
  tokenizer = check_tokenizer(hf_dir, hf_config)
  located = check_tensors(hf_dir, config)
  final = os.path.join(os.path.abspath(out), 'checkpoints', '0')
  if os.path.exists(final):
    raise ConversionError(f'{final} exists already; remove it or choose another --out.')
  staging = os.path.join(os.path.abspath(out), f'.converting-{os.getpid()}')
  shutil.rmtree(staging, ignore_errors=True)
  try:
    step_dir = os.path.join(staging, '0')
    for path, array in iter_tensors(config, located):
      partial.save(step_dir, {'params': _nest(path, array)})
      del array
      _release_freed_memory()
    partial.finalize(step_dir)
    meta = {'model': dataclasses.asdict(config), 'tokenizer': 'tokenizer/tokenizer.json',
            'mask_id': tokenizer.mask_id, 'schedule': dataclasses.asdict(LLADA_SCHEDULE),
            'gradient_clipping': False, 'ema': False, 'layout': 'per_layer',
            'converted_from': os.path.abspath(hf_dir)}
    with Checkpointer(JsonCheckpointHandler()) as writer:
      writer.save(os.path.join(step_dir, 'meta'), args=args.JsonSave(meta))
    tokenizer_dir = os.path.join(os.path.abspath(out), 'tokenizer')
    os.makedirs(tokenizer_dir, exist_ok=True)
    for name in TOKENIZER_FILES:
      if os.path.isfile(os.path.join(hf_dir, name)):
        shutil.copy(os.path.join(hf_dir, name), tokenizer_dir)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    os.rename(step_dir, final)  # the checkpoint exists only once it is whole
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return final


def load_params(hf_dir: str, dtype: str = 'bfloat16', sharding_of=None):
  """(params, ModelConfig, tokenizer) straight from a Hugging Face directory.

  `sharding_of(path)` may give the sharding of each (stacked) parameter; each tensor goes to
  its devices as it is read, and layers are stacked there.
  """
  import jax  # pylint: disable=g-import-not-at-top
  config, hf_config = read_config(hf_dir, dtype)
  tokenizer = check_tokenizer(hf_dir, hf_config)
  located = check_tensors(hf_dir, config)
  place = lambda path: sharding_of(path) if sharding_of else None
  params, layers = {}, {}
  for path, array in iter_tensors(config, located):
    if path[0] == 'layers':
      stacked = place(('blocks', path[2]))
      layer = None if stacked is None else model_lib.layer_sharding(stacked)
      layers.setdefault(path[1], {})[path[2]] = jax.device_put(array, layer)
    else:
      params[path[0]] = jax.device_put(array, place(path))
  params['blocks'] = model_lib.stack_layers(
      layers, lambda name: place(('blocks', name)))
  return params, config, tokenizer


def define_flags():
  """The command line; defined only when this module is the program."""
  flags.DEFINE_string('hf_dir', None, 'A Hugging Face LLaDA model directory.')
  flags.DEFINE_string('out', None, 'Where to write checkpoints/0 and tokenizer/.')
  flags.DEFINE_enum('dtype', 'bfloat16', ['bfloat16', 'float32'], 'Parameter dtype.')
  flags.mark_flags_as_required(['hf_dir', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_library_logs()
  try:
    path = convert(flags.FLAGS.hf_dir, flags.FLAGS.out, flags.FLAGS.dtype)
  except (ConversionError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
  print(f'wrote {path}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
