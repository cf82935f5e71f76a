r"""Multi-turn chat in the terminal with an instruction-tuned model (LLaDA-8B-Instruct).

  python -m dllm_jax.chat --checkpoint=DIR --gen_length=128 --steps=128 --block_length=32

DIR is a converted model (`dllm_jax.convert.llada --out=DIR`), a training workdir, or a
checkpoint path; --hf_dir reads a Hugging Face directory directly. Each turn renders the
whole conversation with the tokenizer's chat template (tokenizer_config.json), generates the
assistant's answer, cuts it at EOS / end-of-turn and keeps it in the history. An empty line
or end of input ends the chat.
"""

import os
import sys

from absl import app, flags

from dllm_jax import checkpoint as ckpt_lib
from dllm_jax import cli
from dllm_jax import generate
from dllm_jax import sampling
from dllm_jax.data.chat import ChatTemplate, ChatTemplateError

def define_flags():
  """The command line; defined only when this module is the program."""
  cli.define_compilation_cache_flag()
  flags.DEFINE_string('checkpoint', None, 'A converted model or training workdir (its latest '
                      'checkpoint), or a checkpoint path.')
  flags.DEFINE_string('hf_dir', None, 'A Hugging Face LLaDA directory, read directly.')
  flags.DEFINE_integer('gen_length', 128, 'Tokens per answer.')
  flags.DEFINE_integer('steps', 128, 'Denoising steps per answer.')
  flags.DEFINE_integer('block_length', None, 'Semi-autoregressive block length (must divide '
                       'gen_length; default 32; ignored by ancestral). A block diffusion '
                       'model decodes its own blocks.')
  generate.define_sampler_flags()
  flags.DEFINE_float('temperature', 0.0, '0 decodes greedily.')
  flags.DEFINE_float('cfg_scale', 0.0, 'Classifier-free guidance weight.')
  flags.DEFINE_bool('block_cache', False, 'Reuse the keys and values outside the current '
                    'block for its steps (Fast-dLLM\'s dual cache): faster, approximate.')
  flags.DEFINE_integer('seed', 0, 'Random seed.')
  flags.DEFINE_string('mesh', '', 'Shard the model over DATAxFSDPxTENSOR devices, e.g. 1x4x2.')
  flags.DEFINE_enum('dtype', None, ['bfloat16', 'float32'], 'Load the parameters in this dtype '
                    'and compute in it; default: the checkpoint\'s own, bfloat16 for --hf_dir.')


def load_for_chat(checkpoint: str | None, hf_dir: str | None, mesh_shape=None,
                  dtype: str | None = None):
  """(model, chat template); `dtype` as in `generate.load` ('float32' for exact parity)."""
  model = generate.load(checkpoint=checkpoint, hf_dir=hf_dir, mesh_shape=mesh_shape,
                        dtype=dtype)
  if model.tokenizer_path == 'bytes':
    raise ChatTemplateError('this model uses the byte tokenizer, which has no chat template.')
  template = ChatTemplate(os.path.join(os.path.dirname(model.tokenizer_path),
                                       'tokenizer_config.json'))
  return model, template


def reply(model, template, messages: list[dict], **settings) -> str:
  """The assistant's next answer to the conversation so far."""
  prompt = template.encode(model.tokenizer, messages, add_generation_prompt=True)
  return generate.generate_ids(model, [prompt], **settings)[0].text.strip()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_library_logs()
  f = flags.FLAGS
  cli.use_compilation_cache(f.compilation_cache)
  settings = dict(gen_length=f.gen_length, steps=f.steps, block_length=f.block_length,
                  temperature=f.temperature, cfg_scale=f.cfg_scale, seed=f.seed,
                  block_cache=f.block_cache, **generate.sampler_settings(f),
                  stop_at_eos=True)  # the answer ends at its EOS: no calls after it
  try:
    model, template = load_for_chat(f.checkpoint, f.hf_dir, generate.parse_mesh(f.mesh),
                                    f.dtype)
    messages = []
    while True:
      try:
        user = input('user> ').strip()
      except EOFError:
        break
      if not user:
        break
      messages.append({'role': 'user', 'content': user})
      answer = reply(model, template, messages, **settings)
      print(f'assistant> {answer}', flush=True)
      messages.append({'role': 'assistant', 'content': answer})
  except (sampling.SamplingError, ckpt_lib.CheckpointError, ChatTemplateError,
          FileNotFoundError, ValueError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
