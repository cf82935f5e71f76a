r"""Chat latency: each turn of a chat, and a new process's time to its first answer.

  python -m dllm_jax.benchmarks.chat_latency --out=/tmp/chat_latency

Writes a random float32 model in LLaDA's format with a chat template (convert.synthetic; by
default the size of configs/llada_small.py), converts it into --out, and then

1. in this process, chats --turns turns (`chat.reply`, the settings of `python -m
   dllm_jax.chat`), timing each turn and counting the XLA compilations it makes. The
   history keeps a short fixed answer for each turn, as a real model's would be (a random
   model's 128 tokens would be noise), so every prompt is a little longer than the last;
2. starts `python -m dllm_jax.chat` --starts times as a new process with one message on
   stdin, timing from the start to its answer. With --compilation_cache (a new directory
   under --out), the later starts find what the first one compiled.

Prints one JSON line. It only uses APIs that older versions of the code have too, so the
same file measures a checkout before a change: `PYTHONPATH=OLD_CHECKOUT python
dllm_jax/benchmarks/chat_latency.py --out=... --compilation_cache=false`.
"""

import json
import os
import subprocess
import sys
import time

import jax
from absl import app, flags

from dllm_jax import chat
from dllm_jax.convert import llada, synthetic

_OUT = flags.DEFINE_string('out', '/tmp/chat_latency', 'Where the model (and cache) go.')
_D_MODEL = flags.DEFINE_integer('d_model', 256, 'Model width.')
_LAYERS = flags.DEFINE_integer('n_layers', 4, 'Layers.')
_TURNS = flags.DEFINE_integer('turns', 5, 'Turns of the in-process chat.')
_STARTS = flags.DEFINE_integer('starts', 2, 'New processes started, one after another.')
_CACHE = flags.DEFINE_bool('compilation_cache', True, 'Give the chat processes a persistent '
                           'compilation cache (a new directory under --out).')
_SETTINGS = dict(gen_length=128, steps=128, block_length=32)  # python -m dllm_jax.chat's
_MESSAGES = ['Hi', 'Tell me about the quick brown fox, please.', 'Why?',
             'And what did the lazy dog do then, in the end?', 'Thanks, bye', 'One more']


def _model(out: str) -> str:
  checkpoint = os.path.join(out, 'model')
  if not os.path.isdir(checkpoint):
    hf_dir = os.path.join(out, 'hf')
    synthetic.write_llada(hf_dir, d_model=_D_MODEL.value, n_layers=_LAYERS.value, n_heads=4,
                          mlp_hidden_size=4 * _D_MODEL.value, std=0.2)
    llada.convert(hf_dir, checkpoint, 'float32')
  return checkpoint


def _turns(checkpoint: str) -> list[dict]:
  # Its own listener, not the tests' helper: this file also runs against older checkouts.
  compiled = []

  def listener(event, duration_s, **kwargs):
    del duration_s, kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      compiled.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  model, template = chat.load_for_chat(checkpoint, None)
  messages, turns = [], []
  for text in (_MESSAGES * _TURNS.value)[:_TURNS.value]:
    messages.append({'role': 'user', 'content': text})
    prompt = template.encode(model.tokenizer, messages, add_generation_prompt=True)
    before, start = len(compiled), time.perf_counter()
    chat.reply(model, template, messages, **_SETTINGS)
    turns.append({'prompt_tokens': len(prompt), 'seconds': time.perf_counter() - start,
                  'compilations': len(compiled) - before})
    messages.append({'role': 'assistant', 'content': 'Fine, thanks.'})
  return turns


def _start(checkpoint: str, cache: str | None) -> float:
  """Seconds from starting a chat process to its first answer."""
  command = [sys.executable, '-m', 'dllm_jax.chat', f'--checkpoint={checkpoint}']
  if cache:
    command.append(f'--compilation_cache={cache}')
  start = time.perf_counter()
  proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  proc.stdin.write('Hi\n')
  proc.stdin.flush()
  line = proc.stdout.readline()
  seconds = time.perf_counter() - start
  proc.communicate('\n', timeout=60)
  if not line.startswith('user> assistant>'):
    raise RuntimeError(f'the chat process printed {line!r}, not an answer')
  return seconds


def main(argv):
  del argv
  out = os.path.abspath(_OUT.value)
  checkpoint = _model(out)
  cache = os.path.join(out, f'compilation_cache_{time.time_ns()}') if _CACHE.value else None
  turns = _turns(checkpoint)
  starts = [_start(checkpoint, cache) for _ in range(_STARTS.value)]
  print(json.dumps({'d_model': _D_MODEL.value, 'n_layers': _LAYERS.value, **_SETTINGS,
                    'device': jax.devices()[0].device_kind, 'compilation_cache': bool(cache),
                    'turns': turns, 'start_to_first_answer_s': starts}), flush=True)


if __name__ == '__main__':
  app.run(main)
