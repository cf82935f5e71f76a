"""Samplers: pure functions that denoise a canvas, each call one compiled loop.

A canvas is a batch of token rows in which the positions to fill hold the mask id; every
other position (the prompt, or the given text of an infilling canvas) is fixed and never
changes, and a position once committed is never changed again. A call runs at most `steps`
model calls (one pass on a doubled batch with classifier-free guidance), in a
`lax.while_loop` that stops early: a block ends as soon as it has no masks, a row once its
last block has ended (or, with `stop_at_eos`, once it has generated an EOS with everything
before it decided: the rest becomes EOS), and the call once every row has ended; rows that
ended stop changing. Every call returns the model calls each row used (`Sample.nfe`). It
compiles once per canvas shape and network: the sampler, steps, temperature and the other
settings are traced values, so a chat whose prompts stay within one `bucket` of lengths
compiles once.

- `ancestral` (MD4/MDLM): walks a time grid from 1 to 0; at each step every masked
  position is unmasked with probability (alpha_s - alpha_t) / (1 - alpha_t) and drawn from
  the model's p(x0 | x_t); the last step fills whatever is left.
- `low_confidence`, `margin`, `entropy`, `random` (LLaDA's remasking): the region from
  `gen_start` is split into blocks of `block_length` filled left to right, each in
  steps / num_blocks steps. A block with m masks commits floor(m / s) tokens per step (the
  remainder to its earliest steps): the candidates (Gumbel-max at `temperature`, argmax at
  0) with the highest confidence, which is the probability of the drawn token, the top-1
  minus top-2 probability, the negative entropy, or uniform noise.
- `threshold`, `factor`, `entropy_bound` (adaptive; Fast-dLLM, EB-sampler): the same
  blocks, but a step commits as many of the block's candidates as its rule allows, and at
  least one and what the fixed schedule of `steps` would: every candidate whose probability
  exceeds `threshold`; the n most probable while (n + 1)(1 - p_n) < `factor`; the n of
  lowest entropy while their summed entropy less the largest is within `entropy_bound`.
  With steps = gen_length, threshold 1 (or factor 0) is `low_confidence` token for token.
  A confident model so fills a block in a few calls and exits early.

With `block_cache` (Fast-dLLM's dual cache), a remasking sampler makes the same steps but
runs the whole canvas only at the first step of each block, keeping every position's keys
and values; the block's other steps run its own tokens alone against them. Faster by about
canvas / block per step, and approximate: the positions outside the block keep the keys
and values they had when the block began. The two compose with every committer.

`sample` runs one setting for the whole batch. `sample_rows` is the same sampler with a
key and settings per row: the server batches unrelated requests through it. The network is
only seen through `logits_fn(params, tokens, attention_mask)`.

The draws are exact in float32 (`gumbel`), indexed by (block, step in the block, position)
so that skipped steps and the window a step runs on shift nothing; `answer_nlls` scores
answers by LLaDA's Monte Carlo likelihood, several at once.
"""

import dataclasses
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from dllm_jax import diffusion
from dllm_jax.config import SAMPLERS

Array = jax.Array
TIME_GRIDS = ('uniform', 'cosine')


class SamplingError(ValueError):
  """Settings that cannot work; the message names the setting."""


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """The settings of one sampler call (hashable). Only `program_settings` of them, and
  whether guidance is on, shape the compiled program; the rest are traced values."""
  mask_id: int
  vocab_size: int  # the tokenizer's: logits past it, and the mask's, are never drawn
  eos_id: int = -1
  sampler: str = 'low_confidence'
  steps: int = 64
  block_length: int = 0  # 0: the whole generation region is one block
  temperature: float = 0.0
  top_k: int = 0  # 0: off
  top_p: float = 1.0  # 1: off
  cfg_scale: float = 0.0  # classifier-free guidance weight w; 0: off
  forbid_eos: bool = False
  time_grid: str = 'uniform'  # ancestral only
  schedule: diffusion.Schedule = diffusion.Schedule('linear')  # ancestral only
  # Fast-dLLM's dual key/value cache, remasking samplers only: faster, approximate.
  block_cache: bool = False
  # Masks before gen_start (in the prompt) are filled too, as in LLaDA's generate(): they
  # compete in every block for its commits (whose number the block's masks set), so as many
  # masks may be left at the end. False leaves them as they are.
  fill_prompt_masks: bool = False
  # The adaptive samplers' bounds: tau, f and gamma (see `_adaptive_count`).
  threshold: float = 0.9
  factor: float = 1.0
  entropy_bound: float = 0.1
  # A row ends once it has generated an EOS with every position before it decided; the
  # rest of its generation becomes EOS without further model calls.
  stop_at_eos: bool = False
  # The network is a block diffusion model (BD3-LM) with blocks of `block_length`: they are
  # decoded left to right, each attending to the exact keys and values of the prompt and
  # the blocks before it, computed once (see `sample_block_causal`).
  block_causal: bool = False


class Sample(NamedTuple):
  tokens: Array  # [B, L] the filled canvas
  commit_step: Array  # [B, L] the row's step at which each position was committed; -1 if given
  nfe: Array  # [B] the model calls each row used (a guided call counts once)


def validate(cfg: SamplerConfig, canvas_len: int, gen_start: int) -> None:
  """Raises SamplingError naming the first setting that cannot work for this canvas."""
  if cfg.sampler not in SAMPLERS:
    raise SamplingError(f'sampler: {cfg.sampler!r} is not one of {", ".join(SAMPLERS)}.')
  if cfg.steps < 1:
    raise SamplingError(f'steps: must be >= 1, got {cfg.steps}.')
  if cfg.temperature < 0:
    raise SamplingError(f'temperature: must be >= 0, got {cfg.temperature}.')
  if not 0 < cfg.top_p <= 1:
    raise SamplingError(f'top_p: must be in (0, 1], got {cfg.top_p}.')
  if cfg.top_k < 0:
    raise SamplingError(f'top_k: must be >= 0, got {cfg.top_k}.')
  if not 0 <= cfg.threshold <= 1:
    raise SamplingError(f'threshold: must be in [0, 1], got {cfg.threshold}.')
  if cfg.factor < 0:
    raise SamplingError(f'factor: must be >= 0, got {cfg.factor}.')
  if cfg.entropy_bound < 0:
    raise SamplingError(f'entropy_bound: must be >= 0, got {cfg.entropy_bound}.')
  if cfg.time_grid not in TIME_GRIDS:
    raise SamplingError(f'time_grid: {cfg.time_grid!r} is not one of {", ".join(TIME_GRIDS)}.')
  if not 0 <= gen_start < canvas_len:
    raise SamplingError(f'the prompt ({gen_start} tokens) leaves no room to generate in a '
                        f'canvas of {canvas_len}.')
  if cfg.block_cache and cfg.sampler == 'ancestral':
    raise SamplingError('block_cache: needs a remasking sampler (blocks); ancestral has none.')
  if cfg.block_causal and (cfg.block_cache or cfg.fill_prompt_masks):
    raise SamplingError('block_causal: a block diffusion model keeps its own exact cache and '
                        'fills the generation only; drop block_cache and fill_prompt_masks.')
  if cfg.block_causal and (not cfg.block_length or gen_start % cfg.block_length):
    raise SamplingError(f'block_causal: the prompt region ({gen_start} tokens) must be a whole '
                        f'number of blocks of block_length={cfg.block_length} (pad it left).')
  if cfg.block_cache and cfg.fill_prompt_masks:
    raise SamplingError('fill_prompt_masks: not with block_cache, whose steps see only the '
                        'current block.')
  if cfg.sampler != 'ancestral' or cfg.block_causal:
    gen_length = canvas_len - gen_start
    block = cfg.block_length or gen_length
    if block < 1 or gen_length % block:
      raise SamplingError(f'block_length: {block} must divide gen_length={gen_length}.')
    if cfg.steps % (gen_length // block):
      raise SamplingError(f'steps: {cfg.steps} must be a multiple of the number of blocks '
                          f'({gen_length // block} = gen_length / block_length).')


class RowSettings(NamedTuple):
  """Per-row settings, each an array [B]: rows of one batch may differ in all of them (the
  server batches requests this way without compiling anything new)."""
  steps: Array  # int32: model calls this row needs; the batch runs max(steps)
  block_length: Array  # int32 (remasking samplers): divides gen_length
  gen_length: Array  # int32: masks from gen_start; any positions after it are padding
  temperature: Array  # float32; 0 is the argmax
  top_k: Array  # int32; 0 keeps all
  top_p: Array  # float32; 1 keeps all
  cfg_scale: Array  # float32; 0: no guidance for this row
  forbid_eos: Array  # bool
  threshold: Array  # float32: the adaptive samplers' bounds
  factor: Array  # float32
  entropy_bound: Array  # float32
  stop_at_eos: Array  # bool


def row_settings(cfg: SamplerConfig, batch: int, gen_length: int) -> RowSettings:
  """`cfg`'s settings for every row of a batch."""
  full = lambda value, dtype: np.full((batch,), value, dtype)  # host arrays: no dispatch
  return RowSettings(full(cfg.steps, jnp.int32), full(cfg.block_length or gen_length, jnp.int32),
                     full(gen_length, jnp.int32), full(cfg.temperature, jnp.float32),
                     full(cfg.top_k, jnp.int32), full(cfg.top_p, jnp.float32),
                     full(cfg.cfg_scale, jnp.float32), full(cfg.forbid_eos, bool),
                     full(cfg.threshold, jnp.float32), full(cfg.factor, jnp.float32),
                     full(cfg.entropy_bound, jnp.float32), full(cfg.stop_at_eos, bool))


def filter_logits(logits_BxLxV: Array, cfg: SamplerConfig, rows: RowSettings) -> Array:
  """float32 logits with never-drawn ids removed, then each row's top-k / top-p filter."""
  logits = logits_BxLxV.astype(jnp.float32)
  ids_V = jnp.arange(logits.shape[-1])
  allowed_BxV = (diffusion.predictable(logits.shape[-1], cfg.mask_id, cfg.vocab_size)[None, :]
                 & ~(rows.forbid_eos[:, None] & (ids_V == cfg.eos_id)[None, :]))
  logits = jnp.where(allowed_BxV[:, None, :], logits, -jnp.inf)

  def truncate(logits):
    sorted_desc = -jnp.sort(-logits, axis=-1)
    k_B = jnp.where(rows.top_k > 0, jnp.minimum(rows.top_k, logits.shape[-1]), logits.shape[-1])
    top_k_V = ids_V[None, None, :] < k_B[:, None, None]
    sorted_desc = jnp.where(top_k_V, sorted_desc, -jnp.inf)
    kth = jnp.min(sorted_desc, axis=-1, keepdims=True, where=top_k_V, initial=jnp.inf)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    # Keep a token if the mass strictly above it is below top_p (so the top-1 always stays).
    mass_above = jnp.cumsum(probs, axis=-1) - probs
    cutoff = jnp.min(jnp.where(mass_above < rows.top_p[:, None, None], sorted_desc, jnp.inf),
                     axis=-1, keepdims=True)
    return jnp.where(logits >= jnp.maximum(kth, cutoff), logits, -jnp.inf)

  return jax.lax.cond(jnp.any((rows.top_k > 0) | (rows.top_p < 1)), truncate, lambda x: x,
                      logits)


def argmax(x: Array) -> Array:
  """`jnp.argmax` over the last axis (the first index of the maximum; a NaN counts as the
  maximum), as int32. Written as a max and a min because XLA's CPU backend runs argmax's
  two-operand reduction 4-5x slower: at 16 x 144 x 264 logits, 1.2 ms against 0.27 ms."""
  top = jnp.max(x, axis=-1, keepdims=True)
  is_top = (x == top) | jnp.isnan(x)
  ids = jnp.arange(x.shape[-1], dtype=jnp.int32)
  return jnp.min(jnp.where(is_top, ids, x.shape[-1]), axis=-1)


def gumbel(key: Array, shape: tuple[int, ...]) -> Array:
  """Standard Gumbel noise, exact in float32.

  The usual float32 draw, -log(-log(u)) with u on a grid of 2^-23, cannot exceed about 16,
  so a token whose logit is more than ~16 below the best one is almost never drawn: with a
  large vocabulary that removes a real share of the mass and lowers the effective
  temperature (Zheng et al. 2024, arXiv 2409.02908; LLaDA draws in float64 for this reason).
  Here u < 1/2 gets 23 more bits from a second uniform, which carries the upper tail to ~32
  (as `jax.random.gumbel(mode='high')`); each uniform is drawn with `shape` itself, so a
  longer canvas extends the noise of a shorter one instead of changing it."""
  high_key, low_key = jax.random.split(key)
  high = jax.random.uniform(high_key, shape, jnp.float32)
  low = jax.random.uniform(low_key, shape, jnp.float32)
  u = jnp.where(high >= 0.5, high, high + 2.0**-23 * low + jnp.finfo(jnp.float32).tiny)
  return -jnp.log(-jnp.log1p(-u))


def per_position(keys_BxL: Array, draw: Callable) -> Array:
  """`draw(key)` with each position's own key: [B, L, ...]."""
  return jax.vmap(jax.vmap(draw))(keys_BxL)


def draw_rows(keys_BxL: Array, logits_BxLxV: Array, temperature_B: Array) -> Array:
  """Gumbel-max draws from softmax(logits / temperature) with a key per position (so a draw
  does not depend on which other positions are drawn with it) and a temperature per row;
  temperature 0 is the argmax."""
  t = temperature_B[:, None, None]

  def noisy(logits):
    noise = per_position(keys_BxL, lambda k: gumbel(k, logits.shape[-1:]))
    return jnp.where(t > 0, logits / jnp.where(t > 0, t, 1.0) + noise, logits)

  scores = jax.lax.cond(jnp.any(temperature_B > 0), noisy, lambda x: x, logits_BxLxV)
  return argmax(scores)


def confidence(keys_BxL: Array, logits_BxLxV: Array, x0_BxL: Array, kind: str) -> Array:
  """Higher is more confident; computed from the filtered distribution at temperature 1.
  `keys_BxL` (a key per position) draw the `random` order."""
  if kind == 'random':
    return per_position(keys_BxL, lambda k: jax.random.uniform(k, ()))
  probs = jax.nn.softmax(logits_BxLxV, axis=-1)
  if kind == 'low_confidence':
    return jnp.take_along_axis(probs, x0_BxL[..., None], axis=-1)[..., 0]
  if kind == 'margin':
    top2 = jax.lax.top_k(probs, 2)[0]
    return top2[..., 0] - top2[..., 1]
  log_probs = jax.nn.log_softmax(logits_BxLxV, axis=-1)
  return jnp.sum(jnp.where(probs > 0, probs * log_probs, 0.0), axis=-1)  # -entropy


REMASKING = SAMPLERS[1:]  # the samplers with semi-autoregressive blocks
ADAPTIVE = ('threshold', 'factor', 'entropy_bound')  # commit as many as their rule allows
CONFIDENCES = ('low_confidence', 'margin', 'entropy', 'random')
# The confidence each remasking sampler orders its candidates by, and its adaptive rule.
_ORDER = {'threshold': 'low_confidence', 'factor': 'low_confidence', 'entropy_bound': 'entropy'}
_CONFIDENCE_OF = np.array([0] + [CONFIDENCES.index(_ORDER.get(s, s)) for s in REMASKING])
_RULE_OF = np.array([ADAPTIVE.index(s) + 1 if s in ADAPTIVE else 0 for s in SAMPLERS])


def _guided(net: Callable, x_BxT: Array, fixed_BxT: Array, mask_id: int,
            cfg_scale_B: Array | None):
  """One model call `net(tokens) -> (logits, aux)`; with guidance (`cfg_scale_B` not None),
  on [conditional; prompt-masked] rows at once, mixed with each row's weight (0 leaves a
  row unguided)."""
  if cfg_scale_B is None:
    return net(x_BxT)
  unconditional = jnp.where(fixed_BxT, mask_id, x_BxT)
  logits, aux = net(jnp.concatenate([x_BxT, unconditional], axis=0))
  cond, uncond = jnp.split(logits.astype(jnp.float32), 2, axis=0)
  return uncond + (cfg_scale_B[:, None, None] + 1.0) * (cond - uncond), aux


def _for_call(a_BxL: Array | None, guided: bool) -> Array | None:
  """Per-row `a_BxL` for the rows of a model call: twice over with guidance."""
  return jnp.concatenate([a_BxL] * 2, axis=0) if guided and a_BxL is not None else a_BxL


def time_grid(u: Array, kind: str) -> Array:
  """The time at grid fraction u in [0, 1]: 1 at u = 0, 0 at u = 1."""
  return 1.0 - u if kind == 'uniform' else jnp.cos(0.5 * jnp.pi * u)


def program_settings(cfg: SamplerConfig) -> SamplerConfig:
  """The part of `cfg` a compiled sampler is specialised on (the vocabulary, the ancestral
  time grid and schedule, and whether prompt masks are filled); `sample` passes every other
  setting as a traced value, so changing it compiles nothing."""
  return SamplerConfig(mask_id=cfg.mask_id, vocab_size=cfg.vocab_size, eos_id=cfg.eos_id,
                       time_grid=cfg.time_grid, schedule=cfg.schedule,
                       fill_prompt_masks=cfg.fill_prompt_masks)


def sample(logits_fn: Callable, params, canvas_BxL: Array, key: Array, cfg: SamplerConfig,
           gen_start: int, attention_mask_BxL: Array | None = None,
           decode_fn: Callable | None = None) -> Sample:
  """Fills the masked positions of `canvas_BxL` in at most `cfg.steps` model calls.

  `gen_start` is where the semi-autoregressive blocks begin (the prompt length when
  generating after a prompt; 0 for infilling). Masks before it are left as they are unless
  `cfg.fill_prompt_masks`. `cfg.block_cache` and `cfg.block_causal` need `decode_fn`
  (`model.make_decode_fn`).

  Compiled once per network, canvas shape, `gen_start`, `program_settings(cfg)`, guidance on
  or off and, with the block cache, block length: the sampler, steps, temperature, top-k,
  top-p, guidance weight and the other settings are traced values. Call it as it is (it is
  jitted inside; an outer `jax.jit` with `cfg` static would compile per setting again).
  """
  validate(cfg, canvas_BxL.shape[1], gen_start)
  batch, length = canvas_BxL.shape
  args = (params, canvas_BxL, jax.random.split(key, batch),
          row_settings(cfg, batch, length - gen_start), np.int32(SAMPLERS.index(cfg.sampler)),
          program_settings(cfg), gen_start, attention_mask_BxL)
  for name in ('block_cache', 'block_causal'):
    if getattr(cfg, name) and decode_fn is None:
      raise SamplingError(f'{name}: needs the network\'s decode_fn (model.make_decode_fn).')
  if cfg.block_causal:
    return _block_causal_jit(decode_fn, *args, guided=bool(cfg.cfg_scale),
                             block=cfg.block_length)
  if cfg.block_cache:
    return _block_cached_jit(decode_fn, *args, guided=bool(cfg.cfg_scale),
                             block=cfg.block_length or length - gen_start)
  return _rows_jit(logits_fn, *args, guided=bool(cfg.cfg_scale))


def _adaptive_count(rule: Array, sorted_BxK: Array, rows: RowSettings) -> Array:
  """[B] how many of the candidates, sorted by decreasing confidence (`sorted_BxK`, -inf
  for none), adaptive rule `rule` (0: none, else 1 + ADAPTIVE's index) commits; at least 1.
  - threshold: every candidate whose probability exceeds tau (Fast-dLLM);
  - factor: the n most probable while (n + 1)(1 - c_n) < f (Fast-dLLM);
  - entropy_bound: the n of lowest entropy while their summed entropy, less the largest,
    stays within gamma (EB-sampler).
  Each condition only gets harder as n grows, so the count is the length of the prefix."""
  valid_BxK = sorted_BxK > -jnp.inf
  n_K = jnp.arange(1, sorted_BxK.shape[1] + 1, dtype=jnp.float32)
  entropy_BxK = jnp.where(valid_BxK, -sorted_BxK, 0.0)
  ok_BxK = jnp.select(
      [rule == 1, rule == 2, rule == 3],
      [sorted_BxK > rows.threshold[:, None],
       (n_K[None, :] + 1.0) * (1.0 - sorted_BxK) < rows.factor[:, None],
       jnp.cumsum(entropy_BxK, axis=1) - entropy_BxK <= rows.entropy_bound[:, None]],
      jnp.zeros_like(valid_BxK))
  count_B = jnp.maximum(jnp.sum(ok_BxK & valid_BxK, axis=1), 1)
  return jnp.where(rule > 0, count_B, 0)


class _Blocks(NamedTuple):
  """Each row's block geometry: ancestral samplers have one block, the whole region."""
  length_B: Array
  count_B: Array
  steps_B: Array  # model calls each block may use

  @classmethod
  def of(cls, rows: RowSettings, sampler_index) -> '_Blocks':
    length_B = jnp.where(sampler_index == 0, rows.gen_length, rows.block_length)
    count_B = rows.gen_length // length_B
    return cls(length_B, count_B, rows.steps // count_B)


class _Progress(NamedTuple):
  """Where each row is: the block it fills (blocks.count_B once it is done), the steps
  taken in it, its masks when it began, and the model calls the row has used (NFE)."""
  block_B: Array
  step_B: Array
  block_masks_B: Array
  nfe_B: Array


def _next_block(masked_BxL: Array, after_B: Array, blocks: _Blocks, rows: RowSettings,
                gen_start: int) -> Array:
  """The first block holding a mask at a position >= after_B (blocks.count_B if none)."""
  positions_L = jnp.arange(masked_BxL.shape[1])
  end_B = gen_start + rows.gen_length
  later_BxL = (masked_BxL & (positions_L[None, :] >= after_B[:, None])
               & (positions_L[None, :] < end_B[:, None]))
  first_B = jnp.min(jnp.where(later_BxL, positions_L[None, :], end_B[:, None]), axis=1)
  return (first_B - gen_start) // blocks.length_B


def _start(canvas_BxL: Array, rows: RowSettings, blocks: _Blocks, cfg: SamplerConfig,
           gen_start: int):
  """The loop's first carry: canvas, commit steps (-1 where given), progress."""
  commit0 = jnp.where(canvas_BxL != cfg.mask_id, -1, jnp.max(rows.steps)).astype(jnp.int32)
  zeros = jnp.zeros(canvas_BxL.shape[0], jnp.int32)
  first_B = _next_block(canvas_BxL == cfg.mask_id, zeros + gen_start, blocks, rows, gen_start)
  if cfg.fill_prompt_masks:  # prompt masks count too: the blocks run from the first
    first_B = jnp.where(jnp.any(canvas_BxL == cfg.mask_id, axis=1), 0, blocks.count_B)
  return canvas_BxL, commit0, _Progress(first_B, zeros, zeros, zeros)


def _committer(rows: RowSettings, blocks: _Blocks, cfg: SamplerConfig, gen_start: int,
               most_per_step: int, sampler_index: Array | int) -> Callable:
  """`commit(prog, keys_B, logits_BxW, x0_BxW, masked_BxW, positions_W) -> (commit_now_BxW,
  block_masks_B)` of sampler SAMPLERS[sampler_index] (a traced value): which positions of a
  window of the canvas (at `positions_W`) take their drawn token x0 at a row's step. The
  remasking samplers share one program but for their confidence and adaptive rule."""

  def remask(prog, keys, logits, x0, masked_BxW, positions_W):
    lo_B = gen_start + prog.block_B * blocks.length_B
    before_end_BxW = positions_W[None, :] < (lo_B + blocks.length_B)[:, None]
    in_block_BxW = masked_BxW & before_end_BxW & (positions_W[None, :] >= lo_B[:, None])
    # The block's mask count, taken at its first step, sets how many commit per step.
    block_masks_B = jnp.where(prog.step_B == 0, in_block_BxW.sum(axis=1), prog.block_masks_B)
    per_step_B = blocks.steps_B
    k_B = block_masks_B // per_step_B + (prog.step_B < block_masks_B % per_step_B)
    # LLaDA's generate() lets every mask before the block's end compete for those commits,
    # masks in the prompt included (otherwise only the block's masks are left there).
    candidates_BxW = masked_BxW & before_end_BxW if cfg.fill_prompt_masks else in_block_BxW
    kinds = [functools.partial(confidence, kind=kind) for kind in CONFIDENCES]
    conf = jax.lax.switch(jnp.asarray(_CONFIDENCE_OF)[sampler_index], kinds, keys, logits, x0)
    conf = jnp.where(candidates_BxW, conf, -jnp.inf)
    # Commit the most confident candidates (ties go to the left): as many as the fixed
    # schedule says, or more where the adaptive rule allows.
    most = min(most_per_step, masked_BxW.shape[1])
    top_BxK, where_BxK = jax.lax.top_k(conf, most)
    k_B = jnp.maximum(k_B, _adaptive_count(jnp.asarray(_RULE_OF)[sampler_index], top_BxK, rows))
    chosen_BxK = jnp.arange(most)[None, :] < k_B[:, None]
    rows_B = jnp.arange(masked_BxW.shape[0])[:, None]
    commit_now = jnp.zeros_like(in_block_BxW).at[rows_B, where_BxK].max(chosen_BxK)
    return commit_now & candidates_BxW, block_masks_B

  def ancestral(prog, keys, logits, x0, masked_BxW, positions_W):
    del logits, x0, positions_W
    i, steps = prog.step_B, blocks.steps_B.astype(jnp.float32)
    alpha_t = cfg.schedule.alpha(time_grid(i / steps, cfg.time_grid))
    alpha_s = cfg.schedule.alpha(time_grid((i + 1) / steps, cfg.time_grid))
    p_unmask_B = jnp.where(i == blocks.steps_B - 1, 1.0, (alpha_s - alpha_t) / (1.0 - alpha_t))
    u_BxW = per_position(keys, lambda k: jax.random.uniform(k, ()))
    return masked_BxW & (u_BxW < p_unmask_B[:, None]), prog.block_masks_B

  return lambda *args: jax.lax.cond(sampler_index == 0, ancestral, remask, *args)  # SAMPLERS[0]


def _denoise(x_BxW: Array, logits_BxWxV: Array, positions_W: Array, prog: _Progress,
             active_B: Array, keys_B: Array, rows: RowSettings, cfg: SamplerConfig,
             commit_fn: Callable, gen_start: int):
  """A step on a window of the canvas given its logits: draw, choose, commit (active rows
  only). Returns the window, where it committed, and the blocks' mask counts. The random
  numbers are indexed by (block, step in block, position from gen_start), so steps skipped
  by an early exit shift no other draw, and a position's draws depend neither on the window
  nor on how far the prompts are padded."""
  def position_keys(key, block, step):  # [W, 2]: a pair of keys per position
    step_key = jax.random.fold_in(jax.random.fold_in(key, block), step)
    return jax.vmap(lambda p: jax.random.split(jax.random.fold_in(step_key, p)))(
        positions_W - gen_start)

  step_keys = jax.vmap(position_keys)(keys_B, prog.block_B, prog.step_B)  # [B, W, 2]
  logits = filter_logits(logits_BxWxV, cfg, rows)
  x0 = draw_rows(step_keys[:, :, 0], logits, rows.temperature)
  commit_now, block_masks_B = commit_fn(prog, step_keys[:, :, 1], logits, x0,
                                        x_BxW == cfg.mask_id, positions_W)
  commit_now = commit_now & active_B[:, None]
  return jnp.where(commit_now, x0, x_BxW), commit_now, block_masks_B


def _advance(x_BxL: Array, commit_BxL: Array, fixed_BxL: Array, prog: _Progress,
             block_masks_B: Array, active_B: Array, rows: RowSettings, blocks: _Blocks,
             cfg: SamplerConfig, gen_start: int):
  """After a step: each active row counts the call, and moves to its next block with masks
  once its block has none left or has used its steps; a row is done after its last block,
  or, with stop_at_eos, once it has generated an EOS with everything before it decided
  (the rest of its region becomes EOS, committed at this step)."""
  positions_L = jnp.arange(x_BxL.shape[1])[None, :]
  masked_BxL = x_BxL == cfg.mask_id
  end_B = (gen_start + (prog.block_B + 1) * blocks.length_B)[:, None]
  left_BxL = masked_BxL & (positions_L < end_B)
  if not cfg.fill_prompt_masks:
    left_BxL &= positions_L >= end_B - blocks.length_B[:, None]
  ended_B = ~jnp.any(left_BxL, axis=1) | (prog.step_B + 1 >= blocks.steps_B)
  following_B = (prog.block_B + 1 if cfg.fill_prompt_masks else
                 _next_block(masked_BxL, end_B[:, 0], blocks, rows, gen_start))
  moves_B = active_B & ended_B
  block_B = jnp.where(moves_B, following_B, prog.block_B)

  region_BxL = (positions_L >= gen_start) & (positions_L < gen_start + rows.gen_length[:, None])
  eos_BxL = region_BxL & (x_BxL == cfg.eos_id) & ~fixed_BxL
  first_eos_B = jnp.min(jnp.where(eos_BxL, positions_L, x_BxL.shape[1]), axis=1)
  undecided_B = jnp.any(masked_BxL & region_BxL & (positions_L < first_eos_B[:, None]), axis=1)
  stops_B = active_B & rows.stop_at_eos & (first_eos_B < x_BxL.shape[1]) & ~undecided_B
  fill_BxL = stops_B[:, None] & masked_BxL & region_BxL
  x_BxL = jnp.where(fill_BxL, cfg.eos_id, x_BxL)
  commit_BxL = jnp.where(fill_BxL, prog.nfe_B[:, None], commit_BxL)
  block_B = jnp.where(stops_B, blocks.count_B, block_B)

  step_B = jnp.where(moves_B, 0, prog.step_B + active_B)
  return x_BxL, commit_BxL, _Progress(block_B, step_B, block_masks_B, prog.nfe_B + active_B)


def _update(a_BxL: Array, a_BxW: Array, lo) -> Array:
  """`a_BxL` with its columns lo.. replaced by the window `a_BxW`."""
  return jax.lax.dynamic_update_slice_in_dim(a_BxL, a_BxW, lo, axis=1)


def _step(carry, active_B: Array, logits_BxWxV: Array, lo, positions_W: Array,
          fixed_BxL: Array, keys_B: Array, rows: RowSettings, blocks: _Blocks,
          cfg: SamplerConfig, gen_start: int, commit_fn: Callable):
  """One step of the rows in `active_B`, on the window of the canvas from `lo` whose
  logits are given: returns the next (canvas, commit steps, progress)."""
  x, commit, prog = carry
  width = positions_W.shape[0]
  window = lambda a: jax.lax.dynamic_slice_in_dim(a, lo, width, axis=1)
  x_W, commit_now, block_masks_B = _denoise(window(x), logits_BxWxV, positions_W, prog,
                                            active_B, keys_B, rows, cfg, commit_fn, gen_start)
  x = _update(x, x_W, lo)
  commit = _update(commit, jnp.where(commit_now, prog.nfe_B[:, None], window(commit)), lo)
  return _advance(x, commit, fixed_BxL, prog, block_masks_B, active_B, rows, blocks, cfg,
                  gen_start)


def sample_rows(logits_fn: Callable, params, canvas_BxL: Array, keys_B: Array,
                rows: RowSettings, sampler_index: Array | int, cfg: SamplerConfig,
                gen_start: int, attention_mask_BxL: Array | None = None, *,
                guided: bool = False, most_per_step: int | None = None,
                on_step: Callable | None = None, report: Array | bool = False) -> Sample:
  """The sampler behind `sample`, with a key and settings per row (`rows`) and the sampler
  `SAMPLERS[sampler_index]` chosen at run time; of `cfg` only `program_settings` are read.
  A row runs at most rows.steps steps and stops changing once it is done (early exit); the
  call ends when every row is done. `guided` (static) runs the doubled guidance pass,
  weighted per row by rows.cfg_scale. `most_per_step` (static) bounds the tokens a row
  commits in one step (default: all it may change). Rows are not validated here: see
  `validate`. With `on_step` (static) and `report` true, `on_step(step, tokens_BxL)` is
  called on the host after every step (streaming).

  Only the positions from `gen_start` on (from 0 with `cfg.fill_prompt_masks`) are drawn,
  with noise indexed from there: a row's draws do not depend on how far its prompt is
  padded."""
  fixed_BxL = canvas_BxL != cfg.mask_id
  lo = 0 if cfg.fill_prompt_masks else gen_start
  positions_W = jnp.arange(lo, canvas_BxL.shape[1])
  blocks = _Blocks.of(rows, sampler_index)
  commit_fn = _committer(rows, blocks, cfg, gen_start, most_per_step or len(positions_W),
                         sampler_index)
  mask = _for_call(attention_mask_BxL, guided)
  net = lambda tokens: (logits_fn(params, tokens, mask), None)

  def step(i_and_carry):
    i, carry = i_and_carry
    logits, _ = _guided(net, carry[0], fixed_BxL, cfg.mask_id,
                        rows.cfg_scale if guided else None)
    carry = _step(carry, carry[2].block_B < blocks.count_B, logits[:, lo:], lo, positions_W,
                  fixed_BxL, keys_B, rows, blocks, cfg, gen_start, commit_fn)
    if on_step is not None:
      jax.lax.cond(report, lambda: io_callback(on_step, None, i, carry[0]), lambda: None)
    return i + 1, carry

  def running(i_and_carry):
    i, (_, _, prog) = i_and_carry
    return (i < jnp.max(rows.steps)) & jnp.any(prog.block_B < blocks.count_B)

  start = _start(canvas_BxL, rows, blocks, cfg, gen_start)
  _, (x, commit, prog) = jax.lax.while_loop(running, step, (jnp.int32(0), start))
  return Sample(x, commit, prog.nfe_B)


def _sample_block_cached(decode_fn: Callable, params, canvas_BxL: Array, keys_B: Array,
                         rows: RowSettings, sampler_index: Array | int, cfg: SamplerConfig,
                         gen_start: int, attention_mask_BxL: Array | None, *, guided: bool,
                         block: int) -> Sample:
  """A remasking sampler with Fast-dLLM's dual cache: the first step of each block runs the
  whole canvas and keeps every position's keys and values; its other steps run only the
  block's tokens, which attend to those cached keys and values (their own refreshed). The
  same steps and commits as `sample_rows`, each step costing about block / canvas of a full
  pass, but approximate: positions outside the block keep the keys and values they had at
  the block's start though the block's tokens changed since (exact for a one-layer model,
  whose keys and values depend on the token alone). Every row has `block` (static) as its
  block length and the same steps. The batch fills one block at a time, the earliest any
  row is on, with the rows on it; the block ends when none of them has masks left in it."""
  fixed_BxL = canvas_BxL != cfg.mask_id
  valid = _for_call(jnp.ones(canvas_BxL.shape, bool) if attention_mask_BxL is None
                    else attention_mask_BxL.astype(bool), guided)
  blocks = _Blocks.of(rows, sampler_index)
  commit_fn = _committer(rows, blocks, cfg, gen_start, block, sampler_index)
  cfg_scale_B = rows.cfg_scale if guided else None

  def one_block(carry):
    b = jnp.min(carry[2].block_B)
    lo = gen_start + b * block
    positions_W = lo + jnp.arange(block)
    window = lambda a: jax.lax.dynamic_slice_in_dim(a, lo, block, axis=1)
    fixed_BxW = window(fixed_BxL)

    def step(carry, logits_BxWxV):  # rows on a later block sit this one out
      return _step(carry, carry[2].block_B == b, logits_BxWxV, lo, positions_W, fixed_BxL,
                   keys_B, rows, blocks, cfg, gen_start, commit_fn)

    def refresh(tokens):  # the whole canvas: logits of the block, every key and value
      logits, cache = decode_fn(params, tokens, None, 0, valid)
      return window(logits), cache

    logits, cache = _guided(refresh, carry[0], fixed_BxL, cfg.mask_id, cfg_scale_B)
    carry = step(carry, logits)

    def cached_step(carry_and_cache):
      carry, cache = carry_and_cache
      net = lambda tokens: decode_fn(params, tokens, cache, lo, valid)
      logits, cache = _guided(net, window(carry[0]), fixed_BxW, cfg.mask_id, cfg_scale_B)
      return step(carry, logits), cache

    on_it = lambda carry_and_cache: jnp.any(carry_and_cache[0][2].block_B == b)
    return jax.lax.while_loop(on_it, cached_step, (carry, cache))[0]

  not_done = lambda carry: jnp.any(carry[2].block_B < blocks.count_B)
  start = _start(canvas_BxL, rows, blocks, cfg, gen_start)
  x, commit, prog = jax.lax.while_loop(not_done, one_block, start)
  return Sample(x, commit, prog.nfe_B)


def _empty_cache(decode_fn: Callable, params, batch: int, length: int):
  """A zero key/value cache of `length` positions for `decode_fn` (whose caches hold
  positions on their third axis, as `model.init_cache`'s)."""
  shapes = jax.eval_shape(decode_fn, params, jnp.zeros((batch, 1), jnp.int32), None, 0,
                          jnp.ones((batch, 1), bool))[1]
  return jax.tree.map(lambda a: jnp.zeros(a.shape[:2] + (length,) + a.shape[3:], a.dtype),
                      shapes)


def sample_block_causal(decode_fn: Callable, params, canvas_BxL: Array, keys_B: Array,
                         rows: RowSettings, sampler_index: Array | int, cfg: SamplerConfig,
                         gen_start: int, attention_mask_BxL: Array | None, *, guided: bool,
                         block: int, on_step: Callable | None = None,
                         report: Array | bool = False) -> Sample:
  """Decodes a block diffusion model, block by block of `block` (static) tokens: each is
  denoised by the sampler's steps, its tokens attending to themselves and to the cached keys
  and values of the prompt and the blocks before it. Every position attends block-causally,
  as in training, so each cached key and value is exactly the one a full forward pass would
  give: they are written once, by the first call of the next block, which runs the finished
  block beside the new one (the first block's runs the whole prompt). No call costs more
  than two blocks, and every call is a denoising step (`Sample.nfe` counts them all).
  Every sampler commits within the block as in its own blocks (ancestral walks its time grid
  once per block); with `stop_at_eos`, a row ends at its EOS and the call once every row
  has, however long the canvas. `on_step` and `report` stream as in `sample_rows`."""
  batch, length = canvas_BxL.shape
  fixed_BxL = canvas_BxL != cfg.mask_id
  valid_BxL = (jnp.ones(canvas_BxL.shape, bool) if attention_mask_BxL is None
               else attention_mask_BxL.astype(bool))
  count_B = rows.gen_length // rows.block_length
  blocks = _Blocks(rows.block_length, count_B, rows.steps // count_B)
  commit_fn = _committer(rows, blocks, cfg, gen_start, block, sampler_index)
  cfg_scale_B = rows.cfg_scale if guided else None
  positions_L = jnp.arange(length)
  block_of = lambda positions: positions // block  # blocks counted from position 0

  def call(x_BxL, cache, lo, width):  # the `width` tokens from lo, through the cache
    positions_T = lo + jnp.arange(width)
    key_valid_BxTxL = valid_BxL[:, None, :] & (
        block_of(positions_L)[None, None, :] <= block_of(positions_T)[None, :, None])
    net = lambda tokens: decode_fn(params, tokens, cache, lo, _for_call(key_valid_BxTxL, guided))
    window = lambda a: jax.lax.dynamic_slice_in_dim(a, lo, width, axis=1)
    logits, cache = _guided(net, window(x_BxL), window(fixed_BxL), cfg.mask_id, cfg_scale_B)
    return logits[:, -block:], cache  # the logits of the block being denoised

  def one_block(b_i_carry_cache):
    b, i, carry, cache = b_i_carry_cache
    lo = gen_start + b * block
    positions_W = lo + jnp.arange(block)

    def step(i, carry, logits_BxWxV):  # rows on another block sit this one out
      carry = _step(carry, carry[2].block_B == b, logits_BxWxV, lo, positions_W, fixed_BxL,
                    keys_B, rows, blocks, cfg, gen_start, commit_fn)
      if on_step is not None:
        jax.lax.cond(report, lambda: io_callback(on_step, None, i, carry[0]), lambda: None)
      return i + 1, carry

    # The block's first call also writes the keys and values of what precedes it.
    logits, cache = jax.lax.cond(
        b == 0, lambda x, cache: call(x, cache, 0, gen_start + block),
        lambda x, cache: call(x, cache, lo - block, 2 * block), carry[0], cache)
    i, carry = step(i, carry, logits)

    def denoise(i_carry_cache):
      i, carry, cache = i_carry_cache
      logits, cache = call(carry[0], cache, lo, block)
      return *step(i, carry, logits), cache

    on_it = lambda i_carry_cache: jnp.any(i_carry_cache[1][2].block_B == b)
    return b + 1, *jax.lax.while_loop(on_it, denoise, (i, carry, cache))

  not_done = lambda b_i_carry_cache: jnp.any(b_i_carry_cache[2][2].block_B < blocks.count_B)
  start = _start(canvas_BxL, rows, blocks, cfg, gen_start)
  cache = _empty_cache(decode_fn, params, batch * (2 if guided else 1), length)
  _, _, (x, commit, prog), _ = jax.lax.while_loop(
      not_done, one_block, (jnp.int32(0), jnp.int32(0), start, cache))
  return Sample(x, commit, prog.nfe_B)


# The compiled samplers behind `sample` (and the server's engine, through `sample_rows`).
_rows_jit = jax.jit(sample_rows, static_argnums=(0, 6, 7),
                    static_argnames=('guided', 'most_per_step', 'on_step'))
_block_cached_jit = jax.jit(_sample_block_cached, static_argnums=(0, 6, 7),
                            static_argnames=('guided', 'block'))
_block_causal_jit = jax.jit(sample_block_causal, static_argnums=(0, 6, 7),
                            static_argnames=('guided', 'block', 'on_step'))


def bucket(length: int, minimum: int = 16) -> int:
  """The padded length a compiled program is shared at: the smallest power of two that
  holds `length` (at least `minimum`)."""
  return max(minimum, 1 << max(length - 1, 0).bit_length())


def _nll_draws(logits_fn: Callable, params, sequence_CxL: Array, valid_CxL: Array,
               answer_start: int, answer_len_C: Array, key: Array, *, mask_id: int,
               vocab_size: int, mc_num: int, batch_size: int) -> Array:
  """[C, mc_num] Monte Carlo draws of -log p(answer c | prompt) (see `answer_nlls`) for C
  answers, each at positions answer_start.. of its own row of `sequence_CxL` (valid where
  `valid_CxL`), the first `answer_len_C[c]` of them real; all use the same random numbers."""
  width = sequence_CxL.shape[1] - answer_start
  slots_A = jnp.arange(width)

  def one_batch(key):
    offset_key, perm_key = jax.random.split(key)
    # l stratified over {1..A}: one shared uniform offset, spread evenly over the batch.
    u_B = jnp.mod(jax.random.uniform(offset_key) + jnp.arange(batch_size) / batch_size, 1.0)
    scores_BxA = jax.random.uniform(perm_key, (batch_size, width))

    def per_answer(sequence_L, n_answer):
      l_B = 1 + jnp.floor(u_B * n_answer).astype(jnp.int32)
      # A uniformly random subset of size l of the real answer slots (padding ranks last).
      scores = jnp.where(slots_A[None, :] < n_answer, scores_BxA, 2.0)
      rank_BxA = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
      masked_BxA = rank_BxA < l_B[:, None]
      masked_BxL = jnp.concatenate(
          [jnp.zeros((batch_size, answer_start), bool), masked_BxA], axis=1)
      tokens_BxL = jnp.broadcast_to(sequence_L, masked_BxL.shape)
      return jnp.where(masked_BxL, mask_id, tokens_BxL), masked_BxL, n_answer / l_B

    inputs_CxBxL, masked_CxBxL, scale_CxB = jax.vmap(per_answer)(sequence_CxL, answer_len_C)
    c, b, length = inputs_CxBxL.shape
    rows = lambda a_CxL: jnp.broadcast_to(a_CxL[:, None, :], (c, b, length)).reshape(-1, length)
    logits = logits_fn(params, inputs_CxBxL.reshape(c * b, length), rows(valid_CxL))
    tokens = rows(sequence_CxL)
    ce = diffusion.cross_entropy(logits, tokens, mask_id, vocab_size).reshape(c, b, length)
    return scale_CxB * jnp.sum(jnp.where(masked_CxBxL, ce, 0.0), axis=2)

  draws_NxCxB = jax.lax.map(one_batch, jax.random.split(key, mc_num // batch_size))
  return jnp.moveaxis(draws_NxCxB, 1, 0).reshape(answer_len_C.shape[0], mc_num)


_nll_draws_jit = jax.jit(_nll_draws, static_argnums=(0, 4), static_argnames=(
    'mask_id', 'vocab_size', 'mc_num', 'batch_size'))


def answer_nlls(logits_fn: Callable, params, prompt: Array, answers: list[Array], key: Array,
                *, mask_id: int, vocab_size: int, mc_num: int = 128,
                batch_size: int = 16) -> tuple[Array, Array]:
  """LLaDA's Monte Carlo estimates of -log p(answer | prompt) in nats for each of `answers`,
  and their standard errors, in one compiled call: [C] and [C].

  Each draw masks l of the A answer tokens, uniformly at random, with l ~ Uniform{1..A}
  stratified across the draws of a batch, and scores A / l times the summed cross-entropy of
  the masked tokens; the prompt is never masked. `mc_num` draws per answer in batches of
  `batch_size` (a forward pass holds batch_size x C rows). All answers share their random
  numbers where their lengths allow (common random numbers). The prompt is left-padded and
  the answers right-padded (out of attention) to `bucket` lengths, so other lengths in the
  same buckets compile nothing new.
  """
  if mc_num % batch_size:
    raise SamplingError(f'mc_num: {mc_num} must be a multiple of batch_size={batch_size}.')
  prompt = np.asarray(prompt, np.int32)
  answers = [np.asarray(a, np.int32) for a in answers]
  if not answers or min(len(a) for a in answers) < 1:
    raise SamplingError('answers: give at least one answer, each of at least one token.')
  width, answer_width = bucket(len(prompt)), bucket(max(len(a) for a in answers))
  sequence_CxL = np.zeros((len(answers), width + answer_width), np.int32)  # 0: any id
  valid_CxL = np.zeros(sequence_CxL.shape, bool)
  for c, answer in enumerate(answers):
    sequence_CxL[c, width - len(prompt):width] = prompt
    sequence_CxL[c, width:width + len(answer)] = answer
    valid_CxL[c, width - len(prompt):width + len(answer)] = True
  draws = _nll_draws_jit(logits_fn, params, sequence_CxL, valid_CxL, width,
                         jnp.asarray([len(a) for a in answers], jnp.int32), key,
                         mask_id=mask_id, vocab_size=vocab_size, mc_num=mc_num,
                         batch_size=batch_size)
  return draws.mean(axis=1), draws.std(axis=1) / math.sqrt(mc_num)


def conditional_nll(logits_fn: Callable, params, prompt_L: Array, answer_A: Array, key: Array,
                    **kwargs) -> tuple[Array, Array]:
  """LLaDA's Monte Carlo estimate of -log p(answer | prompt) in nats and its standard error:
  `answer_nlls` of one answer."""
  nll, stderr = answer_nlls(logits_fn, params, prompt_L, [answer_A], key, **kwargs)
  return nll[0], stderr[0]


def multiple_choice(logits_fn: Callable, params, prompt_L: Array, choices: list[Array],
                    key: Array, **nll_kwargs) -> tuple[int, list[float]]:
  """Scores each answer by its estimated log-likelihood, all in one compiled call (see
  `answer_nlls`, whose common random numbers make the comparison fairer); returns (best
  index, NLLs in nats)."""
  nlls = [float(n) for n in answer_nlls(logits_fn, params, prompt_L, choices, key,
                                        **nll_kwargs)[0]]
  return min(range(len(nlls)), key=nlls.__getitem__), nlls
