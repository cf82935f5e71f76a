"""The denoiser: a Transformer with LLaDA's architecture, in Flax NNX.

Pre-norm blocks of RMSNorm -> attention (grouped-query capable, rotate-half RoPE) -> residual,
RMSNorm -> SwiGLU MLP -> residual; final RMSNorm; untied LM head; no biases; no time input.
Bidirectional unless `causal`, which gives the same network as an autoregressive LM.

Parameter names follow LLaDA's checkpoints (wte, blocks.{attn_norm, q_proj, ...}, ln_f) so
converted weights map one to one. The blocks are stacked on a leading 'layers' axis and run
with `lax.scan` (or unrolled); every parameter carries logical axis names (see sharding.py).

The network knows nothing about masking schedules: it maps tokens to logits.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dllm_jax import sharding

Array = jax.Array

REMAT_POLICIES = {
    'full': None,  # save nothing, recompute the block in the backward pass
    'dots': jax.checkpoint_policies.checkpoint_dots,
    'dots_with_no_batch_dims': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

BATCH_LENGTH_EMBED = ('activation_batch', 'activation_length', 'activation_embed')


# Fields that change how the network runs, not what it computes: a checkpoint made with
# other values loads into this config.
RUNTIME_FIELDS = ('param_dtype', 'dtype', 'scan_layers', 'remat_policy', 'attention_impl',
                  'max_seq_len')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  mlp_dim: int
  max_seq_len: int = 2048
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  init_std: float = 0.02
  causal: bool = False
  param_dtype: str = 'float32'
  dtype: str = 'float32'
  scan_layers: bool = True
  remat_policy: str = 'none'
  attention_impl: str = 'xla'

  @classmethod
  def from_config(cls, model_config, vocab_size: int) -> 'ModelConfig':
    """From `config.model`; `vocab_size` is used when the config leaves it at 0."""
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in model_config.items() if k in fields}
    kwargs['vocab_size'] = model_config.vocab_size or vocab_size
    kwargs['head_dim'] = model_config.head_dim or model_config.d_model // model_config.n_heads
    return cls(**kwargs)

  def num_params(self, include_embedding: bool = True) -> int:
    d, h, k, hd, f = self.d_model, self.n_heads, self.n_kv_heads, self.head_dim, self.mlp_dim
    per_layer = d * hd * (2 * h + 2 * k) + 3 * d * f + 2 * d
    total = self.n_layers * per_layer + d + d * self.vocab_size  # blocks, ln_f, head
    return total + (self.vocab_size * d if include_embedding else 0)

  def flops_per_token(self, seq_len: int, training: bool = True) -> float:
    """Model FLOPs per token: matmuls plus the full L^2 attention (bidirectional, no halving)."""
    matmul = 2 * self.num_params(include_embedding=False)
    attention = 2 * 2 * self.n_layers * seq_len * self.n_heads * self.head_dim
    if self.causal:
      attention /= 2
    return (3 if training else 1) * (matmul + attention)


def _param(value, axes):
  # Sharding is decided by sharding.py from the logical names, not eagerly by Flax.
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def _normal(key, shape, axes, std, dtype):
  return _param(std * jax.random.normal(key, shape, dtype), axes)


def _ones(shape, axes, dtype):
  return _param(jnp.ones(shape, dtype), axes)


def rms_norm(x: Array, scale: Array, eps: float) -> Array:
  """LLaDA's RMSNorm: normalise in float32, cast back, then scale."""
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return x32.astype(x.dtype) * scale.astype(x.dtype)[None, None, :]


def rope_tables(positions: int | Array, head_dim: int,
                theta: float) -> tuple[Array, Array]:
  """cos and sin [L, head_dim] at `positions` [L] (an int n: positions 0..n-1)."""
  if isinstance(positions, int):
    positions = jnp.arange(positions)
  inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angles_LxH2 = jnp.asarray(positions, jnp.float32)[:, None] * inv_freq[None, :]
  angles_LxH = jnp.concatenate([angles_LxH2, angles_LxH2], axis=-1)
  return jnp.cos(angles_LxH), jnp.sin(angles_LxH)


def apply_rope(x_BxLxNxH: Array, cos_LxH: Array, sin_LxH: Array) -> Array:
  """Rotate-half (NeoX) rotary embedding, in float32."""
  x = x_BxLxNxH.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  cos, sin = cos_LxH[None, :, None, :], sin_LxH[None, :, None, :]
  return (x * cos + rotated * sin).astype(x_BxLxNxH.dtype)


class Block(nnx.Module):
  """One pre-norm Transformer block."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    d, h, k, hd, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim
    std, out_std = cfg.init_std, cfg.init_std / (2 * cfg.n_layers) ** 0.5
    dt = jnp.dtype(cfg.param_dtype)
    self.attn_norm = _ones((d,), ('norm',), dt)
    self.q_proj = _normal(rngs.params(), (d, h, hd), ('embed', 'heads', 'head_dim'), std, dt)
    self.k_proj = _normal(rngs.params(), (d, k, hd), ('embed', 'kv_heads', 'head_dim'), std, dt)
    self.v_proj = _normal(rngs.params(), (d, k, hd), ('embed', 'kv_heads', 'head_dim'), std, dt)
    self.attn_out = _normal(rngs.params(), (h, hd, d), ('heads', 'head_dim', 'embed'), out_std,
                            dt)
    self.ff_norm = _ones((d,), ('norm',), dt)
    self.ff_proj = _normal(rngs.params(), (d, f), ('embed', 'mlp'), std, dt)
    self.up_proj = _normal(rngs.params(), (d, f), ('embed', 'mlp'), std, dt)
    self.ff_out = _normal(rngs.params(), (f, d), ('mlp', 'embed'), out_std, dt)

  def __call__(self, x_BxLxD: Array, cos_LxH: Array, sin_LxH: Array,
               mask_Bx1xLxS: Array | None, kv_cache=None):
    """Without `kv_cache`: self-attention over x (causal if configured). With
    `kv_cache=(k_BxSxKxH, v_BxSxKxH, start)`: x holds the tokens at positions start.., their
    keys and values are written into the cache, queries attend over the whole cache under
    `mask_Bx1xLxS`, and (x, (k, v)) is returned."""
    cfg, dt = self.cfg, x_BxLxD.dtype
    w = lambda p: p[...].astype(dt)

    h_BxLxD = rms_norm(x_BxLxD, self.attn_norm[...], cfg.norm_eps)
    q_BxLxNxH = jnp.einsum('bld,dnh->blnh', h_BxLxD, w(self.q_proj))
    k_BxLxKxH = jnp.einsum('bld,dkh->blkh', h_BxLxD, w(self.k_proj))
    v_BxLxKxH = jnp.einsum('bld,dkh->blkh', h_BxLxD, w(self.v_proj))
    heads = ('activation_batch', 'activation_length', 'activation_heads', None)
    q_BxLxNxH = sharding.constrain(apply_rope(q_BxLxNxH, cos_LxH, sin_LxH), heads)
    k_BxLxKxH = sharding.constrain(apply_rope(k_BxLxKxH, cos_LxH, sin_LxH), heads)
    v_BxLxKxH = sharding.constrain(v_BxLxKxH, heads)
    k_BxSxKxH, v_BxSxKxH = k_BxLxKxH, v_BxLxKxH  # the keys and values attended to
    if kv_cache is not None:
      k_cache, v_cache, start = kv_cache
      k_cache = jax.lax.dynamic_update_slice(k_cache, k_BxLxKxH.astype(k_cache.dtype),
                                             (0, start, 0, 0))
      v_cache = jax.lax.dynamic_update_slice(v_cache, v_BxLxKxH.astype(v_cache.dtype),
                                             (0, start, 0, 0))
      k_BxSxKxH, v_BxSxKxH = k_cache.astype(dt), v_cache.astype(dt)
    if cfg.attention_impl == 'xla' and cfg.n_kv_heads < cfg.n_heads:
      # XLA runs grouped heads as a 5-D batched matmul, about half as fast on CPU as the
      # plain per-head one; repeating the few key/value heads costs less than that.
      groups = cfg.n_heads // cfg.n_kv_heads
      k_BxSxKxH = jnp.repeat(k_BxSxKxH, groups, axis=2)
      v_BxSxKxH = jnp.repeat(v_BxSxKxH, groups, axis=2)
    o_BxLxNxH = jax.nn.dot_product_attention(
        q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, mask=mask_Bx1xLxS,
        is_causal=cfg.causal and kv_cache is None, implementation=cfg.attention_impl)
    x_BxLxD = x_BxLxD + jnp.einsum('blnh,nhd->bld', o_BxLxNxH, w(self.attn_out))
    x_BxLxD = sharding.constrain(x_BxLxD, BATCH_LENGTH_EMBED)

    h_BxLxD = rms_norm(x_BxLxD, self.ff_norm[...], cfg.norm_eps)
    gate_BxLxF = jnp.einsum('bld,df->blf', h_BxLxD, w(self.ff_proj))
    up_BxLxF = jnp.einsum('bld,df->blf', h_BxLxD, w(self.up_proj))
    act_BxLxF = sharding.constrain(jax.nn.silu(gate_BxLxF) * up_BxLxF,
                                   ('activation_batch', 'activation_length', 'activation_mlp'))
    x_BxLxD = x_BxLxD + jnp.einsum('blf,fd->bld', act_BxLxF, w(self.ff_out))
    x_BxLxD = sharding.constrain(x_BxLxD, BATCH_LENGTH_EMBED)
    return x_BxLxD if kv_cache is None else (x_BxLxD, (k_cache, v_cache))


class Transformer(nnx.Module):
  """tokens [B, L] (+ optional key-padding mask) -> float32 logits [B, L, V]."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    dt = jnp.dtype(cfg.param_dtype)
    self.wte = _normal(rngs.params(), (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'),
                       cfg.init_std, dt)

    @nnx.split_rngs(splits=cfg.n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
    def make_blocks(rngs):
      return Block(cfg, rngs)

    self.blocks = make_blocks(rngs)
    self.ln_f = _ones((cfg.d_model,), ('norm',), dt)
    self.lm_head = _normal(rngs.params(), (cfg.d_model, cfg.vocab_size), ('embed', 'vocab'),
                           cfg.init_std, dt)

  def _embed(self, tokens_BxL: Array) -> Array:
    # Gather the FSDP-sharded embedding dim first (as FSDP does for every weight); a lookup
    # into a table sharded along 'embed' cannot be resharded to batch-sharded rows cheaply.
    table_VxD = sharding.constrain(self.wte[...], ('vocab', None))
    x_BxLxD = jnp.take(table_VxD, tokens_BxL, axis=0).astype(jnp.dtype(self.cfg.dtype))
    return sharding.constrain(x_BxLxD, BATCH_LENGTH_EMBED)

  def head(self, features_BxLxD: Array) -> Array:
    """Float32 logits of final hidden states (after ln_f): the LM head alone."""
    logits_BxLxV = jnp.einsum('bld,dv->blv', features_BxLxD,
                              self.lm_head[...].astype(features_BxLxD.dtype),
                              preferred_element_type=jnp.float32)
    return sharding.constrain(logits_BxLxV,
                              ('activation_batch', 'activation_length', 'activation_vocab'))

  def __call__(self, tokens_BxL: Array, attention_mask: Array | None = None,
               features_only: bool = False, positions_L: Array | None = None) -> Array:
    """Logits [B, L, V], or with `features_only` the final hidden states [B, L, D] that
    `head` maps to them (a loss can then compute logits a few positions at a time).

    `attention_mask` is [B, L] (the keys that may be attended to: False for padding) or
    [B, L, L] (which key each query may attend to, as block diffusion's); `positions_L`
    (default 0..L-1) are the rotary positions, which repeat when a sequence is run twice
    side by side."""
    cfg = self.cfg
    x_BxLxD = self._embed(tokens_BxL)
    cos_LxH, sin_LxH = rope_tables(tokens_BxL.shape[1] if positions_L is None else positions_L,
                                   cfg.head_dim, cfg.rope_theta)
    mask = None if attention_mask is None else _mask_for_heads(attention_mask)

    graphdef, layers = nnx.split(self.blocks)

    def layer(x, layer_state):
      return nnx.merge(graphdef, layer_state)(x, cos_LxH, sin_LxH, mask)

    if cfg.remat_policy != 'none':
      layer = jax.checkpoint(layer, policy=REMAT_POLICIES[cfg.remat_policy],
                             prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      x_BxLxD, _ = jax.lax.scan(lambda x, s: (layer(x, s), None), x_BxLxD, layers)
    else:
      for i in range(cfg.n_layers):
        x_BxLxD = layer(x_BxLxD, jax.tree.map(lambda a: a[i], layers))
    features_BxLxD = rms_norm(x_BxLxD, self.ln_f[...], cfg.norm_eps)
    return features_BxLxD if features_only else self.head(features_BxLxD)

  def decode(self, tokens_BxT: Array, cache: dict | None, start: Array,
             key_valid: Array) -> tuple[Array, dict]:
    """A forward pass of the T tokens at positions start.. against a key/value cache: they
    attend to every cached position (up to their own if the model is causal; only to
    `key_valid` ones: [B, S], or [B, T, S] per query) and their keys and values join the
    cache. Causal decoding prefills with the whole prompt, then calls once per token;
    `cache=None` starts an empty cache as long as `tokens` (start 0), so one call over a
    whole canvas returns all its keys and values (the diffusion samplers' block cache)."""
    cfg = self.cfg
    if cache is None:
      cache = init_cache(cfg, *tokens_BxT.shape)
    t, s = tokens_BxT.shape[1], cache['k'].shape[2]
    x_BxTxD = self._embed(tokens_BxT)
    cos_TxH, sin_TxH = rope_tables(start + jnp.arange(t), cfg.head_dim, cfg.rope_theta)
    mask = _mask_for_heads(key_valid)
    if cfg.causal:
      mask = mask & (jnp.arange(s)[None, :] <= start + jnp.arange(t)[:, None])[None, None]
    graphdef, layers = nnx.split(self.blocks)

    def layer(x, layer_and_cache):
      layer_state, k_cache, v_cache = layer_and_cache
      return nnx.merge(graphdef, layer_state)(x, cos_TxH, sin_TxH, mask,
                                              kv_cache=(k_cache, v_cache, start))

    x_BxTxD, (k, v) = jax.lax.scan(layer, x_BxTxD, (layers, cache['k'], cache['v']))
    return self.head(rms_norm(x_BxTxD, self.ln_f[...], cfg.norm_eps)), {'k': k, 'v': v}


def _mask_for_heads(mask: Array) -> Array:
  """A key mask [B, S] or a query-key mask [B, T, S] as dot_product_attention's [B, 1, T, S]."""
  mask = mask.astype(bool)
  return mask[:, None, None, :] if mask.ndim == 2 else mask[:, None]


def abstract_model(cfg: ModelConfig) -> tuple[nnx.GraphDef, Any, Any]:
  """(graphdef, abstract params, logical axes) without allocating anything."""
  static = {}

  def make():
    graphdef, state = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    static.update(graphdef=graphdef, axes=nnx.to_pure_dict(nnx.get_partition_spec(state)))
    return nnx.to_pure_dict(state)

  # jax.eval_shape rather than nnx.eval_shape: the latter would attach shardings from the
  # logical names to an active mesh, which only sharding.py may do.
  abstract_params = jax.eval_shape(make)
  return static['graphdef'], abstract_params, static['axes']


def init_params(cfg: ModelConfig, key: Array) -> dict:
  """Freshly initialised parameters as a plain nested dict (jit it with out_shardings)."""
  return nnx.to_pure_dict(nnx.split(Transformer(cfg, nnx.Rngs(params=key)))[1])


def layer_sharding(stacked_sharding):
  """The sharding of one layer's slice of a parameter stacked on a leading 'layers' axis."""
  if isinstance(stacked_sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(stacked_sharding.mesh,
                                      jax.sharding.PartitionSpec(*stacked_sharding.spec[1:]))
  return stacked_sharding


def stack_layers(layers: dict[str, dict[str, Array]], sharding_of=lambda name: None) -> dict:
  """{'0': {name: array}, '1': ...} -> {name: array stacked over layers}, one name at a time
  (so at most one parameter is held twice), each placed with `sharding_of(name)`."""
  order = sorted(layers, key=int)
  blocks = {}
  for name in list(layers[order[0]]):
    parts = [layers[i].pop(name) for i in order]
    blocks[name] = jax.jit(lambda *xs: jnp.stack(xs), out_shardings=sharding_of(name))(*parts)
    del parts
  return blocks


def init_cache(cfg: ModelConfig, batch: int, length: int) -> dict:
  """An empty key/value cache for `Transformer.decode`."""
  shape = (cfg.n_layers, batch, length, cfg.n_kv_heads, cfg.head_dim)
  return {'k': jnp.zeros(shape, jnp.dtype(cfg.dtype)), 'v': jnp.zeros(shape, jnp.dtype(cfg.dtype))}


def make_decode_fn(graphdef: nnx.GraphDef):
  """The pure `decode_fn(params, tokens, cache, start, key_valid) -> (logits, cache)`."""

  def decode_fn(params, tokens_BxT, cache, start, key_valid):
    return nnx.merge(graphdef, params).decode(tokens_BxT, cache, start, key_valid)

  return decode_fn


def make_logits_fn(graphdef: nnx.GraphDef):
  """The pure `logits_fn(params, tokens, attention_mask=None, positions=None)` samplers and
  losses take (see `Transformer.__call__`)."""

  def logits_fn(params, tokens_BxL, attention_mask=None, positions_L=None):
    return nnx.merge(graphdef, params)(tokens_BxL, attention_mask, positions_L=positions_L)

  return logits_fn


def make_features_fn(graphdef: nnx.GraphDef):
  """The pure `features_fn(params, tokens, attention_mask=None, positions=None)` -> final
  hidden states
  [B, L, D]: with `make_head_fn`'s head, the logits_fn that losses split, so that logits
  exist only for a chunk of positions at a time."""

  def features_fn(params, tokens_BxL, attention_mask=None, positions_L=None):
    return nnx.merge(graphdef, params)(tokens_BxL, attention_mask, features_only=True,
                                       positions_L=positions_L)

  return features_fn


def make_head_fn(graphdef: nnx.GraphDef):
  """The pure `head_fn(params, features [B, C, D]) -> float32 logits [B, C, V]`."""

  def head_fn(params, features_BxCxD):
    return nnx.merge(graphdef, params).head(features_BxCxD)

  return head_fn


@functools.lru_cache(maxsize=None)
def _graphdef(cfg: ModelConfig) -> nnx.GraphDef:
  return abstract_model(cfg)[0]


def apply(cfg: ModelConfig, params, tokens_BxL, attention_mask_BxL=None) -> Array:
  """Convenience forward pass for tests and notebooks."""
  return make_logits_fn(_graphdef(cfg))(params, tokens_BxL, attention_mask_BxL)
