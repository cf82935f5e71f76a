"""Chat templates: the Jinja template of a Hugging Face `tokenizer_config.json`, rendered
without `transformers` (the same sandboxed Jinja settings it uses), then tokenized.

For LLaDA-8B-Instruct this gives BOS on the first turn, each turn as
`<|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>`, and the assistant header
as the generation prompt.
"""

import json
import os

import jinja2
from jinja2 import sandbox


class ChatTemplateError(ValueError):
  """A tokenizer_config.json without a usable chat template."""


def _token_text(value) -> str:
  """tokenizer_config.json writes special tokens as strings or as {'content': ...}."""
  if isinstance(value, dict):
    return value.get('content', '')
  return value or ''


class ChatTemplate:

  def __init__(self, tokenizer_config_path: str):
    if not os.path.isfile(tokenizer_config_path):
      raise ChatTemplateError(f'no tokenizer_config.json at {tokenizer_config_path}.')
    with open(tokenizer_config_path, encoding='utf-8') as f:
      config = json.load(f)
    source = config.get('chat_template')
    if isinstance(source, list):  # several named templates: take the default one
      source = next((t['template'] for t in source if t.get('name') == 'default'), None)
    if not source:
      raise ChatTemplateError(f'{tokenizer_config_path} has no chat_template.')
    env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=['jinja2.ext.loopcontrols'])
    env.globals['raise_exception'] = self._raise
    self._template = env.from_string(source)
    self._tokens = {name: _token_text(config.get(name))
                    for name in ('bos_token', 'eos_token', 'pad_token')}

  @staticmethod
  def _raise(message):
    raise ChatTemplateError(message)

  def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    try:
      return self._template.render(messages=messages,
                                   add_generation_prompt=add_generation_prompt, **self._tokens)
    except jinja2.TemplateError as e:
      raise ChatTemplateError(f'the chat template failed: {e}') from e

  def encode(self, tokenizer, messages: list[dict], add_generation_prompt: bool = True):
    return tokenizer.encode(self.render(messages, add_generation_prompt))
