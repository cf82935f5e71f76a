"""Random-weight models in LLaDA's Hugging Face format, for tests and benchmarks offline.

`write_llada(directory, ...)` writes config.json (LLaDA's field names), sharded
`*.safetensors` with `model.safetensors.index.json` (LLaDA's tensor names, [out, in] linear
weights), and a small byte-level BPE tokenizer.json / tokenizer_config.json with LLaDA's
special tokens and a chat template in its format. Shards are written one at a time, so a
model of several GB never sits in memory whole.
"""

import json
import os

import numpy as np
import tokenizers
from safetensors.numpy import save_file
from tokenizers import decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ['<|startoftext|>', '<|endoftext|>', '<|mdm_mask|>', '<|start_header_id|>',
                  '<|end_header_id|>', '<|eot_id|>']
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}")
_CORPUS = ['def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n',
           'The quick brown fox jumps over the lazy dog. Hello there, how are you?\n',
           'user assistant system: answer the question. 0123456789 + - * / = ( ) [ ] { }\n']


def write_tokenizer(directory: str, vocab_size: int = 320) -> tokenizers.Tokenizer:
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(_CORPUS * 20, trainer)
  tok.save(os.path.join(directory, 'tokenizer.json'))
  with open(os.path.join(directory, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
    json.dump({'bos_token': '<|startoftext|>', 'eos_token': '<|endoftext|>',
               'pad_token': '<|endoftext|>', 'chat_template': CHAT_TEMPLATE}, f, indent=2)
  return tok


def write_llada(directory: str, *, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                n_kv_heads: int | None = None, mlp_hidden_size: int = 160,
                embedding_size: int = 352, rope_theta: float = 500000.0, seed: int = 0,
                dtype=np.float32, shard_bytes: int = 2**20, std: float = 0.02) -> dict:
  """Writes a random LLaDA model; returns its config.json contents."""
  os.makedirs(directory, exist_ok=True)
  tok = write_tokenizer(directory, vocab_size=min(embedding_size, 320))
  n_kv_heads = n_kv_heads or n_heads
  head_dim = d_model // n_heads
  config = {
      'architectures': ['LLaDAModelLM'], 'model_type': 'llada', 'activation_type': 'silu',
      'alibi': False, 'attention_layer_norm': False, 'block_type': 'llama', 'd_model': d_model,
      'embedding_size': embedding_size, 'eos_token_id': tok.token_to_id('<|endoftext|>'),
      'include_bias': False, 'include_qkv_bias': False, 'input_emb_norm': False,
      'layer_norm_type': 'rms', 'mask_token_id': tok.token_to_id('<|mdm_mask|>'),
      'max_sequence_length': 4096, 'mlp_hidden_size': mlp_hidden_size, 'n_heads': n_heads,
      'n_kv_heads': n_kv_heads, 'n_layers': n_layers,
      'pad_token_id': tok.token_to_id('<|endoftext|>'), 'rms_norm_eps': 1e-5, 'rope': True,
      'rope_theta': rope_theta, 'scale_logits': False, 'vocab_size': embedding_size,
      'weight_tying': False,
  }
  with open(os.path.join(directory, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(config, f, indent=2)
  p = 'model.transformer.'
  shapes = {f'{p}wte.weight': (embedding_size, d_model)}
  for i in range(n_layers):
    b = f'{p}blocks.{i}.'
    shapes.update({
        f'{b}attn_norm.weight': (d_model,), f'{b}q_proj.weight': (n_heads * head_dim, d_model),
        f'{b}k_proj.weight': (n_kv_heads * head_dim, d_model),
        f'{b}v_proj.weight': (n_kv_heads * head_dim, d_model),
        f'{b}attn_out.weight': (d_model, n_heads * head_dim), f'{b}ff_norm.weight': (d_model,),
        f'{b}ff_proj.weight': (mlp_hidden_size, d_model),
        f'{b}up_proj.weight': (mlp_hidden_size, d_model),
        f'{b}ff_out.weight': (d_model, mlp_hidden_size)})
  shapes.update({f'{p}ln_f.weight': (d_model,), f'{p}ff_out.weight': (embedding_size, d_model)})
  rng = np.random.default_rng(seed)
  weight_map, shard, shard_size, shard_names = {}, {}, 0, []

  def flush():
    name = f'model-{len(shard_names) + 1:05d}.safetensors'
    save_file(shard, os.path.join(directory, name))
    shard_names.append(name)
    weight_map.update({t: name for t in shard})

  for name, shape in shapes.items():
    if len(shape) == 1:  # norm scales around 1
      value = (1.0 + 0.1 * rng.standard_normal(shape)).astype(dtype)
    else:
      value = (std * rng.standard_normal(shape, dtype=np.float32)).astype(dtype)
    shard[name] = value
    shard_size += value.nbytes
    if shard_size >= shard_bytes:
      flush()
      shard, shard_size = {}, 0
  if shard:
    flush()
  with open(os.path.join(directory, 'model.safetensors.index.json'), 'w',
            encoding='utf-8') as f:
    json.dump({'metadata': {}, 'weight_map': weight_map}, f, indent=2)
  return config
