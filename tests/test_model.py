"""The denoiser: shapes, dtypes, bidirectional vs causal, masks, scan == unrolled."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import model as model_lib
from dllm_jax import sharding

CFG = model_lib.ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                            head_dim=8, mlp_dim=64)
B, L = 2, 12


@pytest.fixture(scope='module')
def params():
  return model_lib.init_params(CFG, jax.random.key(0))


def tokens(seed=1):
  return jax.random.randint(jax.random.key(seed), (B, L), 0, CFG.vocab_size)


def test_shapes_and_finite(params):
  logits = model_lib.apply(CFG, params, tokens())
  chex.assert_shape(logits, (B, L, CFG.vocab_size))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)


def test_param_names_and_shapes_follow_llada(params):
  shapes = jax.tree.map(jnp.shape, params)
  n, d, h, k, hd, f, v = 2, 32, 4, 2, 8, 64, 64
  assert shapes == {
      'wte': (v, d), 'ln_f': (d,), 'lm_head': (d, v),
      'blocks': {'attn_norm': (n, d), 'q_proj': (n, d, h, hd), 'k_proj': (n, d, k, hd),
                 'v_proj': (n, d, k, hd), 'attn_out': (n, h, hd, d), 'ff_norm': (n, d),
                 'ff_proj': (n, d, f), 'up_proj': (n, d, f), 'ff_out': (n, f, d)}}
  assert CFG.num_params() == sum(x.size for x in jax.tree.leaves(params))


def test_every_parameter_has_logical_axes():
  _, abstract, axes = model_lib.abstract_model(CFG)
  flat_axes = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  for spec, leaf in zip(flat_axes, jax.tree.leaves(abstract)):
    assert len(spec) == leaf.ndim and all(name is not None for name in spec)


def _input_sensitivity(cfg, params, position):
  """|d logits[position] / d embedding of the input at j| for every j.

  Each position holds a different token, so the gradient reaching row j of the embedding
  table is exactly the gradient with respect to the input at position j.
  """
  x = jnp.arange(L)[None, :]
  out_at = lambda wte: model_lib.apply(cfg, dict(params, wte=wte), x)[0, position].sum()
  return jnp.abs(jax.grad(out_at)(params['wte'])[:L]).sum(axis=1)


def test_bidirectional_output_depends_on_later_inputs(params):
  g = _input_sensitivity(CFG, params, position=3)
  assert np.all(np.asarray(g) > 0)  # every position, before and after 3


def test_causal_output_ignores_later_inputs(params):
  g = _input_sensitivity(dataclasses.replace(CFG, causal=True), params, position=3)
  assert np.all(np.asarray(g[:4]) > 0)
  np.testing.assert_array_equal(g[4:], 0.0)


def test_features_then_head_are_the_logits(params):
  x, valid = tokens(), jnp.arange(L)[None, :].repeat(B, 0) < 9
  graphdef = model_lib.abstract_model(CFG)[0]
  features = model_lib.make_features_fn(graphdef)(params, x, valid)
  chex.assert_shape(features, (B, L, CFG.d_model))
  np.testing.assert_allclose(model_lib.make_head_fn(graphdef)(params, features),
                             model_lib.apply(CFG, params, x, valid), rtol=1e-6, atol=1e-6)


def test_key_padding_mask_hides_padded_positions(params):
  x = tokens()
  valid = jnp.arange(L)[None, :].repeat(B, 0) < 8
  base = model_lib.apply(CFG, params, x, valid)
  other = model_lib.apply(CFG, params, x.at[:, 8:].set(0), valid)
  np.testing.assert_allclose(base[:, :8], other[:, :8], atol=1e-6)
  unmasked = model_lib.apply(CFG, params, x.at[:, 8:].set(0))
  assert not np.allclose(base[:, :8], unmasked[:, :8], atol=1e-4)


@pytest.mark.parametrize('change', [dict(scan_layers=False), dict(remat_policy='full'),
                                    dict(remat_policy='dots', scan_layers=False),
                                    dict(remat_policy='dots_with_no_batch_dims')])
def test_scan_and_remat_do_not_change_the_function(params, change):
  x = tokens()
  other = dataclasses.replace(CFG, **change)
  np.testing.assert_allclose(model_lib.apply(CFG, params, x), model_lib.apply(other, params, x),
                             atol=1e-5)
  loss = lambda cfg: lambda p: model_lib.apply(cfg, p, x).mean()
  chex.assert_trees_all_close(jax.grad(loss(CFG))(params), jax.grad(loss(other))(params),
                              atol=1e-6)


def test_grouped_query_attention_equals_repeated_heads(params):
  """n_kv_heads < n_heads equals full multi-head attention with each K/V head repeated."""
  x = tokens()
  mha = dataclasses.replace(CFG, n_kv_heads=CFG.n_heads)
  rep = CFG.n_heads // CFG.n_kv_heads
  blocks = dict(params['blocks'])
  for name in ('k_proj', 'v_proj'):
    blocks[name] = jnp.repeat(blocks[name], rep, axis=2)
  np.testing.assert_allclose(model_lib.apply(CFG, params, x),
                             model_lib.apply(mha, dict(params, blocks=blocks), x), atol=1e-5)


def test_bidirectional_decode_against_a_cache_equals_the_full_pass(params):
  """What the samplers' block cache relies on: one cached pass over the canvas gives the
  plain forward pass and every key and value; the tokens of a block, run alone against that
  cache, get the logits the full pass gives them."""
  x, valid = tokens(), jnp.arange(L)[None, :].repeat(B, 0) >= 2
  decode_fn = model_lib.make_decode_fn(model_lib.abstract_model(CFG)[0])
  full = model_lib.apply(CFG, params, x, valid)
  logits, cache = decode_fn(params, x, None, 0, valid)
  np.testing.assert_allclose(logits, full, atol=1e-5)
  block, _ = decode_fn(params, x[:, 4:8], cache, 4, valid)
  np.testing.assert_allclose(block, full[:, 4:8], atol=1e-5)
  # A new token in the block: with one layer (keys and values depend on the token alone)
  # the block's logits are exact; with more, the other positions' cached keys and values
  # are stale, so they are only close.
  changed = x.at[:, 5].set((x[:, 5] + 1) % CFG.vocab_size)
  for n_layers, exact_too in ((1, True), (2, False)):
    cfg = dataclasses.replace(CFG, n_layers=n_layers)
    p = dict(params, blocks=jax.tree.map(lambda a: a[:n_layers], params['blocks']))
    decode_fn = model_lib.make_decode_fn(model_lib.abstract_model(cfg)[0])
    _, cache = decode_fn(p, x, None, 0, valid)
    block, _ = decode_fn(p, changed[:, 4:8], cache, 4, valid)
    exact = model_lib.apply(cfg, p, changed, valid)[:, 4:8]
    assert not np.allclose(block, model_lib.apply(cfg, p, x, valid)[:, 4:8], atol=1e-3)
    assert np.allclose(block, exact, atol=1e-5) == exact_too


def test_bfloat16_compute_is_close_to_float32(params):
  x = tokens()
  bf16 = dataclasses.replace(CFG, dtype='bfloat16')
  out = model_lib.apply(bf16, params, x)
  chex.assert_type(out, jnp.float32)
  np.testing.assert_allclose(out, model_lib.apply(CFG, params, x), atol=5e-2)
  low = model_lib.init_params(dataclasses.replace(CFG, param_dtype='bfloat16'), jax.random.key(0))
  assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(low))


def test_rope_is_a_rotation_by_position():
  """Rotary embedding preserves norms and makes q.k depend only on the offset."""
  cos, sin = model_lib.rope_tables(16, 8, 10000.0)
  q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
  k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))
  rot = lambda v, pos: model_lib.apply_rope(v, cos[pos:pos + 1], sin[pos:pos + 1])
  np.testing.assert_allclose(jnp.linalg.norm(rot(q, 5)), jnp.linalg.norm(q), rtol=1e-5)
  dot = lambda i, j: float(jnp.sum(rot(q, i) * rot(k, j)))
  np.testing.assert_allclose(dot(3, 1), dot(9, 7), rtol=1e-4)


def test_sharded_forward_equals_unsharded(params):
  from dllm_jax.config import base_config
  config = base_config()
  config.mesh.update(data=2, fsdp=2, tensor=2)
  mesh = sharding.make_mesh(config.mesh)
  _, abstract, axes = model_lib.abstract_model(CFG)
  shardings = sharding.tree_shardings(mesh, config.logical_axis_rules, axes, abstract)
  x = jax.random.randint(jax.random.key(1), (4, L), 0, CFG.vocab_size)
  expected = model_lib.apply(CFG, params, x)
  with sharding.use_mesh(mesh, config.logical_axis_rules):
    sharded = jax.device_put(params, shardings)
    got = jax.jit(lambda p, t: model_lib.apply(CFG, p, t))(sharded, x)
  assert len(sharded['blocks']['q_proj'].sharding.device_set) == 8
  np.testing.assert_allclose(got, expected, atol=1e-5)
