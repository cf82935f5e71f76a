r"""Serve a diffusion LM over HTTP: an OpenAI-compatible API and a live web page.

  python -m dllm_jax.serve --checkpoint=DIR --port=5000

DIR is anything `dllm_jax.generate` loads (a training workdir, a converted LLaDA, a
checkpoint path); --hf_dir serves a Hugging Face LLaDA directory directly. Open
http://127.0.0.1:5000/ to watch answers denoise, or call /v1/completions and
/v1/chat/completions with any OpenAI client (README: "Serving"). Every shape the server
may run is compiled before it starts listening, so no request waits for a compilation.

It binds 127.0.0.1 unless --host says otherwise. With the environment variable named by
--api_key_env (DLLM_API_KEY) set, every /v1 call and /metrics need `Authorization: Bearer
KEY`; without one, binding to a non-loopback address is refused.
"""

import ipaddress
import logging
import os
import sys

from absl import app, flags

from dllm_jax import checkpoint as ckpt_lib
from dllm_jax import cli
from dllm_jax import generate
from dllm_jax.config import ConfigError
from dllm_jax.server import api
from dllm_jax.server import engine as engine_lib


def define_flags():
  """The command line; defined only when this module is the program."""
  cli.define_compilation_cache_flag()
  flags.DEFINE_string('checkpoint', None, 'A training workdir, converted model or checkpoint.')
  flags.DEFINE_string('hf_dir', None, 'A Hugging Face LLaDA directory, read directly.')
  flags.DEFINE_string('model_name', '', 'The model id clients ask for (default: the '
                      'directory\'s name).')
  flags.DEFINE_string('host', '127.0.0.1', 'Address to bind.')
  flags.DEFINE_integer('port', 5000, 'Port to bind.')
  flags.DEFINE_string('api_key_env', 'DLLM_API_KEY', 'Environment variable holding the API key.')
  flags.DEFINE_integer('max_batch', 8, 'Most samples (rows) in one sampler call.')
  flags.DEFINE_list('prompt_buckets', ['128', '512'], 'Prompt lengths compiled (tokens); the '
                    'largest is the longest prompt served.')
  flags.DEFINE_list('gen_buckets', ['64', '256'], 'Generation lengths compiled; the largest '
                    'is the most max_tokens served.')
  flags.DEFINE_bool('allow_cfg', False, 'Also compile guided shapes, so that requests may set '
                    'cfg_scale (twice the compilations).')
  flags.DEFINE_integer('max_steps', 1024, 'Most denoising steps a request may ask for.')
  flags.DEFINE_integer('max_queue', 64, 'Rows that may wait; more get 429 + Retry-After.')
  flags.DEFINE_float('batch_wait_ms', 5.0, 'How long a call waits for companions.')
  flags.DEFINE_float('request_timeout_s', 300.0, 'Longest a request may take.')
  flags.DEFINE_integer('max_body_bytes', 1 << 20, 'Largest request body.')
  flags.DEFINE_integer('default_max_tokens', 64, 'max_tokens when a request gives none.')
  flags.DEFINE_string('mesh', '', 'Shard the model over DATAxFSDPxTENSOR devices, e.g. 1x4x2.')
  flags.DEFINE_bool('use_ema', False, 'Serve the EMA parameters.')


def _is_loopback(host: str) -> bool:
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return host == 'localhost'


def build(f) -> tuple:
  """(FastAPI app, engine) from the flags; the engine is warmed up."""
  api_key = os.environ.get(f.api_key_env) or None
  if api_key is None and not _is_loopback(f.host):
    raise ConfigError(f'--host={f.host} would serve to the network without an API key; set '
                      f'{f.api_key_env} (or bind 127.0.0.1).')
  model = generate.load(checkpoint=f.checkpoint, hf_dir=f.hf_dir, use_ema=f.use_ema,
                        mesh_shape=generate.parse_mesh(f.mesh))
  ints = lambda values, name: tuple(_positive(v, name) for v in values)
  engine = engine_lib.Engine(model, max_batch=_positive(f.max_batch, 'max_batch'),
                             prompt_buckets=ints(f.prompt_buckets, 'prompt_buckets'),
                             gen_buckets=ints(f.gen_buckets, 'gen_buckets'),
                             allow_cfg=f.allow_cfg, max_queue=f.max_queue,
                             max_steps=_positive(f.max_steps, 'max_steps'),
                             batch_wait_s=f.batch_wait_ms / 1000)
  engine.warm_up()
  name = f.model_name or os.path.basename(os.path.normpath(f.checkpoint or f.hf_dir))
  return api.create_app(engine, model_name=name, api_key=api_key,
                        request_timeout_s=f.request_timeout_s, max_body_bytes=f.max_body_bytes,
                        default_max_tokens=f.default_max_tokens), engine


def _positive(value, name: str) -> int:
  try:
    number = int(value)
  except ValueError:
    number = 0
  if number < 1:
    raise ConfigError(f'--{name}: {value!r} is not a positive integer.')
  return number


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_library_logs()
  logging.getLogger().setLevel(logging.INFO)
  f = flags.FLAGS
  cli.use_compilation_cache(f.compilation_cache)
  try:
    if bool(f.checkpoint) == bool(f.hf_dir):
      raise ConfigError('give exactly one of --checkpoint and --hf_dir.')
    application, engine = build(f)
  except (ConfigError, ckpt_lib.CheckpointError, FileNotFoundError, ValueError) as e:
    sys.exit(f'error: {e}')
  import uvicorn  # pylint: disable=g-import-not-at-top
  logging.info('serving on http://%s:%d/', f.host, f.port)
  try:
    uvicorn.run(application, host=f.host, port=f.port, log_level='warning')
  finally:
    engine.stop()


if __name__ == '__main__':
  define_flags()
  app.run(main)
