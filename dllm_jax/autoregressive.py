"""The autoregressive baseline: the same Transformer with `causal=True`, trained on
next-token cross-entropy and decoded with a key/value cache.

Its loss scores exactly the tokens the diffusion NELBO scores (every valid token of a row,
the first one predicted from a BOS put in front), so AR bits/token and dLLM NELBO
bits/token compare like for like. Decoding prefills the prompt in one call and then runs one
`lax.scan` step per new token; like the diffusion samplers it never draws the mask token or
ids past the tokenizer's vocabulary.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from dllm_jax import diffusion
from dllm_jax import model as model_lib
from dllm_jax import sampling

Array = jax.Array


def make_loss_fn(logits_fn: Callable, bos_id: int, mask_id: int, data_vocab_size: int, *,
                 head_fn: Callable | None = None, padded: bool = True):
  """`loss_fn(params, batch, key) -> (nats/token, aux)` with the aux sums, `head_fn` and
  `padded` of diffusion.make_loss_fn ('nelbo_sum' is the summed negative log-likelihood)."""

  def loss_fn(params, batch, key):
    del key  # deterministic
    tokens_BxL = batch['tokens']
    valid_BxL = batch['valid'].astype(bool)
    bos_Bx1 = jnp.full((tokens_BxL.shape[0], 1), bos_id, tokens_BxL.dtype)
    inputs_BxL = jnp.concatenate([bos_Bx1, tokens_BxL[:, :-1]], axis=1)
    input_valid_BxL = jnp.concatenate([jnp.ones_like(valid_BxL[:, :1]), valid_BxL[:, :-1]], 1)
    features_BxLxF = logits_fn(params, inputs_BxL, input_valid_BxL if padded else None)
    nll_BxL = diffusion.scored_cross_entropy(head_fn, params, features_BxLxF, tokens_BxL,
                                             valid_BxL, mask_id, data_vocab_size)
    num_tokens = valid_BxL.sum().astype(jnp.float32)
    nll_sum = jnp.sum(nll_BxL)
    aux = {'nelbo_sum': nll_sum, 'normalizer': num_tokens, 'masked': num_tokens,
           'targets': num_tokens}
    return nll_sum / jnp.maximum(num_tokens, 1.0), aux

  return loss_fn


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """Settings of KV-cache decoding. Only the vocabulary and `gen_length` shape the compiled
  program; the sampling settings are traced values."""
  mask_id: int
  vocab_size: int
  eos_id: int = -1
  gen_length: int = 128
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  forbid_eos: bool = False

  def filtering(self) -> sampling.SamplerConfig:
    return sampling.SamplerConfig(mask_id=self.mask_id, vocab_size=self.vocab_size,
                                  eos_id=self.eos_id, temperature=self.temperature,
                                  top_k=self.top_k, top_p=self.top_p,
                                  forbid_eos=self.forbid_eos)


def generate(decode_fn: Callable, model_config: model_lib.ModelConfig, params,
             prompt_BxP: Array, prompt_valid_BxP: Array, key: Array,
             cfg: DecodeConfig) -> Array:
  """`gen_length` tokens after each (left-padded) prompt: [B, gen_length].

  One prefill call over the prompt, then gen_length - 1 single-token calls in a scan.
  Compiled once per network, shape and vocabulary (it is jitted inside).
  """
  if cfg.gen_length < 1:
    raise sampling.SamplingError(f'gen_length: must be >= 1, got {cfg.gen_length}.')
  filtering = cfg.filtering()
  batch = prompt_BxP.shape[0]
  return _decode_jit(decode_fn, model_config, params, prompt_BxP, prompt_valid_BxP,
                     jax.random.split(key, batch), sampling.row_settings(filtering, batch, 1),
                     sampling.program_settings(filtering), cfg.gen_length)


def _decode(decode_fn: Callable, model_config: model_lib.ModelConfig, params,
            prompt_BxP: Array, prompt_valid_BxP: Array, keys_B: Array,
            rows: sampling.RowSettings, vocab: sampling.SamplerConfig,
            gen_length: int) -> Array:
  batch, prompt_len = prompt_BxP.shape
  key_valid_BxS = jnp.concatenate(
      [prompt_valid_BxP.astype(bool), jnp.ones((batch, gen_length), bool)], axis=1)
  cache = model_lib.init_cache(model_config, batch, prompt_len + gen_length)
  logits, cache = decode_fn(params, prompt_BxP, cache, 0, key_valid_BxS)

  def pick(logits_BxV, i):
    filtered = sampling.filter_logits(logits_BxV[:, None, :], vocab, rows)
    keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys_B)
    return sampling.draw_rows(keys[:, None], filtered, rows.temperature)[:, 0]

  def step(carry, i):
    last_BxV, cache = carry
    token_B = pick(last_BxV, i)
    logits, cache = decode_fn(params, token_B[:, None], cache, prompt_len + i, key_valid_BxS)
    return (logits[:, -1], cache), token_B

  (last, _), tokens_GxB = jax.lax.scan(step, (logits[:, -1], cache),
                                       jnp.arange(gen_length - 1))
  final_B = pick(last, gen_length - 1)
  return jnp.concatenate([tokens_GxB.T, final_B[:, None]], axis=1)


_decode_jit = jax.jit(_decode, static_argnums=(0, 1, 7, 8))
