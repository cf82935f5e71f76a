"""The masked-diffusion process: schedules, forward corruption and the continuous-time ELBO.

At time t in [0, 1] each token is kept with probability alpha(t) and replaced by the mask
token otherwise (alpha(0) ~ 1: clean data; alpha(1) ~ 0: all masks). The negative ELBO of a
sequence x0 of n tokens is (MD4, Shi et al. 2024; MDLM, Sahoo et al. 2024)

  NELBO = E_t[ w(t) * sum_{masked l} -log p(x0_l | x_t) ] + recon + prior,
  w(t) = -alpha'(t) / (1 - alpha(t)),

with t drawn antithetically across the batch. Schedules are clipped to
alpha in [eps, 1 - eps] as in MD4, which leaves two small end terms that are added in closed
form: `prior` (the ~eps of tokens still unmasked at t=1, against a prior that draws those
uniformly: alpha(1) log V per token) and `recon` (the ~eps of tokens masked at t=0, charged
at the uniform cost log V: (1 - alpha(0)) log V per token). For a model that predicts
uniformly over the V data tokens (the mask is never predicted) the bound is exactly log V
per token.

This module never looks inside the network: it takes a pure `logits_fn(params, tokens,
attention_mask)`, or the network split in two, `features_fn` (the same signature, giving the
final hidden states) and `head_fn(params, features) -> logits`, so that the loss computes
logits a chunk of positions at a time and never holds [B, L, V] of them (2 GB per row of
4096 tokens at LLaDA's 126,464-token vocabulary in float32).
"""

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
LN2 = math.log(2.0)
AUX_SUMS = ('nelbo_sum', 'normalizer', 'masked', 'targets')
# Float32 logits the loss holds at once, across the batch: a chunk of positions per row.
CE_CHUNK_BYTES = 2**28


@dataclasses.dataclass(frozen=True)
class Schedule:
  """alpha(t), the probability that a token is still unmasked at time t, and alpha'(t)."""
  kind: str  # 'linear' | 'cosine' | 'polynomial'
  power: float = 1.0  # k of the polynomial schedule
  eps: float = 1e-4

  def _raw(self, t):
    if self.kind == 'linear':
      return 1.0 - t, -jnp.ones_like(t)
    if self.kind == 'cosine':
      angle = 0.5 * jnp.pi * (1.0 - t)
      return 1.0 - jnp.cos(angle), -0.5 * jnp.pi * jnp.sin(angle)
    if self.kind == 'polynomial':
      return 1.0 - t ** self.power, -self.power * t ** (self.power - 1.0)
    raise ValueError(f'unknown schedule {self.kind!r}')

  def alpha(self, t: Array) -> Array:
    return self.eps + (1.0 - 2.0 * self.eps) * self._raw(jnp.asarray(t, jnp.float32))[0]

  def dalpha(self, t: Array) -> Array:
    return (1.0 - 2.0 * self.eps) * self._raw(jnp.asarray(t, jnp.float32))[1]

  def weight(self, t: Array) -> Array:
    """-alpha'(t) / (1 - alpha(t)): the ELBO weight of a masked token's cross-entropy."""
    return -self.dalpha(t) / (1.0 - self.alpha(t))

  def end_terms_per_token(self, num_classes: int) -> float:
    """recon + prior in nats per token (see the module docstring)."""
    ends = (1.0 - self.alpha(0.0)) + self.alpha(1.0)
    return float(ends) * math.log(num_classes)


def schedule_from_config(diffusion_config) -> Schedule:
  return Schedule(diffusion_config.schedule, float(diffusion_config.schedule_power),
                  float(diffusion_config.eps))


def antithetic_times(key: Array, n: int) -> Array:
  """n times in [0, 1), one in each interval [i/n, (i+1)/n), sharing one uniform offset."""
  u = jax.random.uniform(key, ())
  return jnp.mod(u + jnp.arange(n, dtype=jnp.float32) / n, 1.0)


def corrupt(key: Array, tokens_BxL: Array, valid_BxL: Array, alpha: Array,
            mask_id: int) -> tuple[Array, Array]:
  """Masks each valid token independently with probability 1 - alpha (per row [B], or per
  token [B, L]); padding is kept."""
  alpha_Bx1 = alpha[:, None] if alpha.ndim == 1 else alpha
  drop_BxL = jax.random.uniform(key, tokens_BxL.shape) >= alpha_Bx1
  masked_BxL = drop_BxL & valid_BxL
  return jnp.where(masked_BxL, mask_id, tokens_BxL), masked_BxL


def predictable(num_logits: int, mask_id: int, data_vocab_size: int) -> Array:
  """Which logits may be predicted: data ids, never the mask or ids past the tokenizer's."""
  ids = jnp.arange(num_logits)
  return (ids != mask_id) & (ids < data_vocab_size)


def num_classes(mask_id: int, data_vocab_size: int) -> int:
  return data_vocab_size - (mask_id < data_vocab_size)


def cross_entropy(logits_BxLxV: Array, targets_BxL: Array, mask_id: int,
                  data_vocab_size: int) -> Array:
  """-log p(target) in float32 over the predictable ids only."""
  allowed_V = predictable(logits_BxLxV.shape[-1], mask_id, data_vocab_size)
  logits = jnp.where(allowed_V[None, None, :], logits_BxLxV.astype(jnp.float32), -jnp.inf)
  target_logit = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - target_logit


def scored_cross_entropy(head_fn: Callable | None, params, features_BxLxF: Array,
                         targets_BxL: Array, scored_BxL: Array, mask_id: int,
                         data_vocab_size: int) -> Array:
  """`cross_entropy` at the scored positions, 0 elsewhere: [B, L] float32.

  `head_fn(params, features_BxCxF)` gives the logits of C positions (None: the features are
  the logits). It runs over chunks of positions in a scan, each chunk rematerialised in the
  backward pass, so at most CE_CHUNK_BYTES of float32 logits exist at a time, however long
  the rows or large the vocabulary.
  """
  batch, length = targets_BxL.shape
  if head_fn is None:
    head_fn, num_logits = (lambda _, logits: logits), features_BxLxF.shape[-1]
  else:
    num_logits = jax.eval_shape(head_fn, params, features_BxLxF[:, :1]).shape[-1]
  max_chunk = max(1, CE_CHUNK_BYTES // (4 * num_logits * batch))
  num_chunks = -(-length // max_chunk)
  chunk = -(-length // num_chunks)  # as even as possible: the least padding

  def chunks(x_BxL):  # [B, L, ...] -> [num_chunks, B, chunk, ...], zero-padded
    padding = [(0, 0), (0, num_chunks * chunk - length)] + [(0, 0)] * (x_BxL.ndim - 2)
    x = jnp.pad(x_BxL, padding).reshape(batch, num_chunks, chunk, *x_BxL.shape[2:])
    return x.swapaxes(0, 1)

  # Keep only the inputs: the backward pass recomputes the chunk's logits. (No CSE to
  # prevent inside a scan.)
  @functools.partial(jax.checkpoint, prevent_cse=False)
  def chunk_ce(inputs):
    features_BxCxF, targets_BxC, scored_BxC = inputs
    ce_BxC = cross_entropy(head_fn(params, features_BxCxF), targets_BxC, mask_id,
                           data_vocab_size)
    return jnp.where(scored_BxC, ce_BxC, 0.0)

  ce_NxBxC = jax.lax.map(chunk_ce, (chunks(features_BxLxF), chunks(targets_BxL),
                                    chunks(scored_BxL)))
  return ce_NxBxC.swapaxes(0, 1).reshape(batch, num_chunks * chunk)[:, :length]


def block_attention_mask(length: int, block_size: int) -> np.ndarray:
  """[2L, 2L] bool: which keys each query may attend to when the noisy sequence (the first L)
  and the clean one (the last L) run side by side, in blocks of `block_size` (BD3-LM): a
  noisy token sees its own noisy block and the clean blocks before it; a clean token sees
  its own clean block and the clean blocks before it."""
  block_L = np.arange(length) // block_size
  same, before = block_L[:, None] == block_L[None, :], block_L[:, None] > block_L[None, :]
  return np.block([[same, before], [np.zeros_like(same), same | before]])


def make_loss_fn(logits_fn: Callable, schedule: Schedule, mask_id: int, data_vocab_size: int,
                 discrete_steps: int = 0, *, head_fn: Callable | None = None,
                 padded: bool = True, block_size: int = 0,
                 t_range: tuple[float, float] = (0.0, 1.0)):
  """Returns `loss_fn(params, batch, key) -> (nelbo nats/token, aux)`.

  With `block_size` K (0, or the row length: one block), block diffusion (BD3-LM, Arriola et
  al. 2025): the row is cut into blocks of K tokens, each corrupted at its own time t and
  denoised from its noisy self and the clean blocks before it; the NELBO is the sum of the
  blocks' bounds. Every block is scored in one pass over the noisy and the clean row side by
  side (2L tokens, `block_attention_mask`, the rotary positions repeated), and times are
  stratified over all blocks of the batch. K = 1 is an autoregressive model whose input at
  the predicted position is the mask.

  `t_range` [beta, omega] draws t from that interval only (BD3-LM's clipped masking rates, a
  variance reduction for training): the loss is then no longer the NELBO, so evaluation
  keeps (0, 1).

  With `head_fn`, `logits_fn` gives final hidden states and `head_fn` their logits (see the
  module docstring). `padded=False` promises that no row is partly padded (rows of padding
  only score nothing): the network then runs without a key mask, which changes nothing but
  speed (cuDNN's attention is faster without one).

  With `discrete_steps` T > 0 it estimates the discrete-time T-step bound instead: t on the
  grid {1/T, ..., 1} (stratified across the batch), weighted T (alpha(t - 1/T) - alpha(t)) /
  (1 - alpha(t)); it lies above the continuous bound and approaches it as T grows.

  `data_vocab_size` is the tokenizer's: the network may have more logits (its vocabulary
  rounded up for sharding), which are never predicted, like the mask.

  `batch` has 'tokens' [B, L] int32 and 'valid' [B, L] (0 for padding). aux holds sums that
  combine exactly over microbatches and hosts (AUX_SUMS): the loss is 'nelbo_sum' (nats) /
  'normalizer' (here the number of valid tokens); 'masked' of 'targets' were masked.
  """
  end_terms = schedule.end_terms_per_token(num_classes(mask_id, data_vocab_size))
  lo, hi = t_range

  def loss_fn(params, batch, key):
    tokens_BxL = batch['tokens']
    valid_BxL = batch['valid'].astype(bool)
    (batch_size, length), t_key, mask_key = tokens_BxL.shape, *jax.random.split(key)
    block = block_size if 0 < block_size < length else length
    if length % block:
      raise ValueError(f'block_size: {block} must divide the row length {length}.')
    # One time per block, stratified over all of them (row b's blocks spread over [0, 1)).
    t_BxN = antithetic_times(t_key, batch_size * (length // block)).reshape(-1, batch_size).T
    t_BxN = lo + (hi - lo) * t_BxN
    if discrete_steps:
      t_BxN = (jnp.floor(t_BxN * discrete_steps) + 1.0) / discrete_steps
      alpha_s = schedule.alpha(t_BxN - 1.0 / discrete_steps)
      weight_BxN = discrete_steps * (alpha_s - schedule.alpha(t_BxN)) / (
          1.0 - schedule.alpha(t_BxN))
    else:
      weight_BxN = schedule.weight(t_BxN)
    per_token = lambda a_BxN: jnp.repeat(a_BxN, block, axis=1)
    xt_BxL, masked_BxL = corrupt(mask_key, tokens_BxL, valid_BxL,
                                 per_token(schedule.alpha(t_BxN)), mask_id)
    if block == length:
      features_BxLxF = logits_fn(params, xt_BxL, valid_BxL if padded else None)
    else:
      mask_1xMxM = jnp.asarray(block_attention_mask(length, block))[None]
      if padded:
        mask_1xMxM = mask_1xMxM & jnp.concatenate([valid_BxL, valid_BxL], axis=1)[:, None, :]
      positions_M = jnp.concatenate([jnp.arange(length)] * 2)
      features_BxLxF = logits_fn(params, jnp.concatenate([xt_BxL, tokens_BxL], axis=1),
                                 mask_1xMxM, positions_M)[:, :length]
    ce_BxL = scored_cross_entropy(head_fn, params, features_BxLxF, tokens_BxL, masked_BxL,
                                  mask_id, data_vocab_size)
    num_tokens = valid_BxL.sum().astype(jnp.float32)
    ce_BxN = ce_BxL.reshape(batch_size, -1, block).sum(axis=2)
    nelbo_sum = jnp.sum(weight_BxN * ce_BxN) + end_terms * num_tokens
    aux = {'nelbo_sum': nelbo_sum, 'normalizer': num_tokens,
           'masked': masked_BxL.sum().astype(jnp.float32), 'targets': num_tokens}
    return nelbo_sum / jnp.maximum(num_tokens, 1.0), aux

  return loss_fn


def report(nelbo_nats_per_token) -> dict[str, float]:
  """The NELBO as nats/token, bits/token and a perplexity upper bound."""
  nats = float(nelbo_nats_per_token)
  return {'nelbo_nats': nats, 'bits_per_token': nats / LN2,
          'perplexity_bound': math.exp(min(nats, 700.0))}


def make_sft_loss_fn(logits_fn: Callable, schedule: Schedule, mask_id: int,
                     data_vocab_size: int, *, head_fn: Callable | None = None,
                     padded: bool = True):
  """Supervised fine-tuning on (prompt, answer) rows, as in LLaDA's guidelines.

  `batch` adds 'prompt' [B, L] (True on prompt tokens). Only answer tokens (the answer and
  the EOS that pads the row, which teach the model where to stop) are ever masked and
  scored; the prompt is always visible. Each row's weighted cross-entropy is divided by its
  answer length, and the loss is the mean over rows: 'normalizer' counts rows. `head_fn` and
  `padded` are make_loss_fn's.
  """

  def loss_fn(params, batch, key):
    tokens_BxL = batch['tokens']
    valid_BxL = batch['valid'].astype(bool)
    answer_BxL = valid_BxL & ~batch['prompt'].astype(bool)
    t_key, mask_key = jax.random.split(key)
    t_B = antithetic_times(t_key, tokens_BxL.shape[0])
    xt_BxL, masked_BxL = corrupt(mask_key, tokens_BxL, answer_BxL, schedule.alpha(t_B), mask_id)
    features_BxLxF = logits_fn(params, xt_BxL, valid_BxL if padded else None)
    ce_BxL = scored_cross_entropy(head_fn, params, features_BxLxF, tokens_BxL, masked_BxL,
                                  mask_id, data_vocab_size)
    answer_len_B = answer_BxL.sum(axis=1).astype(jnp.float32)
    per_row_B = schedule.weight(t_B) * ce_BxL.sum(axis=1) / jnp.maximum(answer_len_B, 1.0)
    rows = (answer_len_B > 0).sum().astype(jnp.float32)
    aux = {'nelbo_sum': per_row_B.sum(), 'normalizer': rows,
           'masked': masked_BxL.sum().astype(jnp.float32), 'targets': answer_len_B.sum()}
    return aux['nelbo_sum'] / jnp.maximum(rows, 1.0), aux

  return loss_fn
