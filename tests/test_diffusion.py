"""The masked-diffusion math: schedules, corruption and the continuous-time ELBO."""

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import autoregressive
from dllm_jax import diffusion
from dllm_jax import model as model_lib

SCHEDULES = [diffusion.Schedule('linear'), diffusion.Schedule('cosine'),
             diffusion.Schedule('polynomial', power=2.0), diffusion.Schedule('polynomial', 3.0)]
NUM_LOGITS, DATA_VOCAB, MASK_ID = 16, 12, 11  # 11 predictable classes, 4 padded logits


@pytest.mark.parametrize('schedule', SCHEDULES, ids=lambda s: f'{s.kind}{s.power}')
def test_alpha_is_clipped_and_monotone(schedule):
  t = jnp.linspace(0.0, 1.0, 101)
  alpha = schedule.alpha(t)
  np.testing.assert_allclose([alpha[0], alpha[-1]], [1 - schedule.eps, schedule.eps], atol=1e-7)
  assert np.all(np.diff(np.asarray(alpha)) <= 0)


@pytest.mark.parametrize('schedule', SCHEDULES, ids=lambda s: f'{s.kind}{s.power}')
def test_weight_matches_finite_difference(schedule):
  t = np.linspace(0.1, 0.95, 18)
  h = 1e-3  # alpha is float32: a smaller step drowns in rounding
  a = lambda x: np.asarray(schedule.alpha(x), np.float64)
  fd = (a(t + h) - a(t - h)) / (2 * h)
  np.testing.assert_allclose(schedule.dalpha(t), fd, rtol=2e-3, atol=2e-3)
  np.testing.assert_allclose(schedule.weight(t), -fd / (1 - a(t)), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize('schedule', SCHEDULES, ids=lambda s: f'{s.kind}{s.power}')
def test_uniform_model_bound_is_log_v_in_closed_form(schedule):
  """E_t[w(t) * P(masked)] log V + end terms = log V: the integral done by quadrature."""
  t = (np.arange(200_000) + 0.5) / 200_000
  expected_masked_weight = np.mean(np.asarray(schedule.weight(t) * (1 - schedule.alpha(t))))
  log_v = math.log(diffusion.num_classes(MASK_ID, DATA_VOCAB))
  total = expected_masked_weight * log_v + schedule.end_terms_per_token(11)
  np.testing.assert_allclose(total, log_v, rtol=1e-4)


def uniform_logits_fn(params, tokens_BxL, attention_mask_BxL=None):
  del params, attention_mask_BxL
  return jnp.zeros(tokens_BxL.shape + (NUM_LOGITS,))


@pytest.mark.parametrize('schedule', SCHEDULES[:3], ids=lambda s: s.kind)
def test_uniform_model_estimator_mean_is_log_v(schedule):
  loss_fn = jax.jit(diffusion.make_loss_fn(uniform_logits_fn, schedule, MASK_ID, DATA_VOCAB))
  tokens = jax.random.randint(jax.random.key(0), (8, 64), 0, DATA_VOCAB - 1)
  batch = {'tokens': tokens, 'valid': jnp.ones_like(tokens, bool)}
  draws = np.array([float(loss_fn(None, batch, jax.random.key(i))[0]) for i in range(400)])
  log_v = math.log(DATA_VOCAB - 1)
  stderr = draws.std() / math.sqrt(len(draws))
  assert abs(draws.mean() - log_v) < 4 * stderr + 1e-6, (draws.mean(), log_v, stderr)
  assert abs(draws.mean() - log_v) < 0.02 * log_v


def test_antithetic_times_cover_the_unit_interval_evenly():
  for seed in range(5):
    t = np.asarray(diffusion.antithetic_times(jax.random.key(seed), 16))
    assert np.all((t >= 0) & (t < 1))
    np.testing.assert_array_equal(np.sort(np.floor(t * 16)), np.arange(16))


def test_corruption_rate_and_padding():
  tokens = jnp.full((4, 20_000), 5)
  valid = jnp.arange(20_000)[None, :].repeat(4, 0) < 15_000
  alpha = jnp.array([0.9, 0.5, 0.2, 0.0])
  xt, masked = diffusion.corrupt(jax.random.key(0), tokens, valid, alpha, MASK_ID)
  rate = np.asarray(masked[:, :15_000].mean(axis=1))
  np.testing.assert_allclose(rate, 1 - np.asarray(alpha), atol=0.015)
  assert not np.any(np.asarray(masked[:, 15_000:]))
  np.testing.assert_array_equal(xt == MASK_ID, masked)


def test_mask_and_padded_logits_are_never_predicted():
  logits = jax.random.normal(jax.random.key(0), (2, 5, NUM_LOGITS))
  targets = jax.random.randint(jax.random.key(1), (2, 5), 0, DATA_VOCAB - 1)
  base = diffusion.cross_entropy(logits, targets, MASK_ID, DATA_VOCAB)
  boosted = logits.at[..., MASK_ID].set(50.0).at[..., DATA_VOCAB:].set(50.0)
  np.testing.assert_allclose(diffusion.cross_entropy(boosted, targets, MASK_ID, DATA_VOCAB), base,
                             rtol=1e-6)
  grad = jax.grad(lambda z: diffusion.cross_entropy(z, targets, MASK_ID, DATA_VOCAB).sum())(logits)
  np.testing.assert_array_equal(grad[..., MASK_ID], 0.0)
  np.testing.assert_array_equal(grad[..., DATA_VOCAB:], 0.0)
  reference = -jax.nn.log_softmax(logits[..., :MASK_ID], axis=-1)
  np.testing.assert_allclose(base, jnp.take_along_axis(reference, targets[..., None], -1)[..., 0],
                             rtol=1e-5)


def test_padding_never_changes_the_loss():
  cfg = model_lib.ModelConfig(vocab_size=NUM_LOGITS, d_model=16, n_layers=1, n_heads=2,
                              n_kv_heads=2, head_dim=8, mlp_dim=32)
  params = model_lib.init_params(cfg, jax.random.key(0))
  graphdef = model_lib.abstract_model(cfg)[0]
  loss_fn = jax.jit(diffusion.make_loss_fn(model_lib.make_logits_fn(graphdef),
                                           diffusion.Schedule('linear'), MASK_ID, DATA_VOCAB))
  tokens = jax.random.randint(jax.random.key(1), (4, 24), 0, DATA_VOCAB - 1)
  valid = jnp.arange(24)[None, :] < jnp.array([24, 20, 10, 3])[:, None]
  batch = {'tokens': tokens, 'valid': valid}
  other = {'tokens': jnp.where(valid, tokens, 7), 'valid': valid}
  key = jax.random.key(2)
  (loss_a, aux_a), (loss_b, aux_b) = loss_fn(params, batch, key), loss_fn(params, other, key)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  assert int(aux_a['normalizer']) == int(valid.sum())
  np.testing.assert_allclose(aux_a['nelbo_sum'], aux_b['nelbo_sum'], rtol=1e-6)


def test_scored_cross_entropy_in_chunks_is_the_masked_cross_entropy(monkeypatch):
  monkeypatch.setattr(diffusion, 'CE_CHUNK_BYTES', 4 * NUM_LOGITS * 3 * 4)  # 4 per row
  logits = jax.random.normal(jax.random.key(0), (3, 13, NUM_LOGITS))
  targets = jax.random.randint(jax.random.key(1), (3, 13), 0, DATA_VOCAB - 1)
  scored = jax.random.bernoulli(jax.random.key(2), 0.5, (3, 13))
  expected = jnp.where(scored, diffusion.cross_entropy(logits, targets, MASK_ID, DATA_VOCAB), 0)
  np.testing.assert_array_equal(
      diffusion.scored_cross_entropy(None, None, logits, targets, scored, MASK_ID, DATA_VOCAB),
      expected)


@pytest.mark.parametrize('objective', ['elbo', 'sft', 'ar'])
def test_logits_a_chunk_at_a_time_give_the_same_loss_and_gradients(objective, monkeypatch):
  """The network split before its head, the loss computes logits a few positions at a time
  (here 5 per row, the last chunk padded) and equals the loss of the whole network's logits;
  on batches with no partly padded row, so does the loss without a key mask."""
  cfg = model_lib.ModelConfig(vocab_size=NUM_LOGITS, d_model=16, n_layers=1, n_heads=2,
                              n_kv_heads=2, head_dim=8, mlp_dim=32, causal=objective == 'ar')
  params = model_lib.init_params(cfg, jax.random.key(0))
  graphdef = model_lib.abstract_model(cfg)[0]

  def make(logits_fn, **kwargs):
    schedule = diffusion.Schedule('linear')
    if objective == 'sft':
      return diffusion.make_sft_loss_fn(logits_fn, schedule, MASK_ID, DATA_VOCAB, **kwargs)
    if objective == 'ar':
      return autoregressive.make_loss_fn(logits_fn, 10, MASK_ID, DATA_VOCAB, **kwargs)
    return diffusion.make_loss_fn(logits_fn, schedule, MASK_ID, DATA_VOCAB, **kwargs)

  tokens = jax.random.randint(jax.random.key(1), (4, 23), 0, DATA_VOCAB - 1)
  prompt = jnp.arange(23)[None, :] < jnp.array([3, 5, 7, 2])[:, None]
  # Whole rows: each all tokens or, like an SFT row with no room for an answer, all padding.
  whole_rows = {'tokens': tokens, 'valid': jnp.broadcast_to(jnp.arange(4)[:, None] < 3, (4, 23)),
                'prompt': prompt}
  padded = dict(whole_rows, valid=jnp.arange(23)[None, :] < jnp.array([23, 20, 10, 3])[:, None])
  monkeypatch.setattr(diffusion, 'CE_CHUNK_BYTES', 4 * NUM_LOGITS * 4 * 5)
  # Logits at every position in one call; slicing them in chunks is the plain cross-entropy
  # (the test above).
  all_logits = make(model_lib.make_logits_fn(graphdef))
  features_fn, head_fn = model_lib.make_features_fn(graphdef), model_lib.make_head_fn(graphdef)
  split = make(features_fn, head_fn=head_fn)
  unmasked = make(features_fn, head_fn=head_fn, padded=False)

  @jax.jit  # one compilation for all
  def losses_and_grads():
    value_and_grad = lambda loss_fn, batch: jax.value_and_grad(
        lambda p: loss_fn(p, batch, jax.random.key(2))[0])(params)
    return (value_and_grad(all_logits, padded), value_and_grad(split, padded),
            value_and_grad(all_logits, whole_rows), value_and_grad(unmasked, whole_rows))

  expected_padded, got_padded, expected_whole, got_whole = losses_and_grads()
  chex.assert_trees_all_close(got_padded, expected_padded, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(got_whole, expected_whole, rtol=1e-5, atol=1e-7)


def test_report_units():
  r = diffusion.report(math.log(256))
  np.testing.assert_allclose(r['bits_per_token'], 8.0)
  np.testing.assert_allclose(r['perplexity_bound'], 256.0)


# ---- block diffusion (BD3-LM)

TINY = model_lib.ModelConfig(vocab_size=NUM_LOGITS, d_model=16, n_layers=2, n_heads=2,
                             n_kv_heads=2, head_dim=8, mlp_dim=32)


def test_block_attention_mask_against_a_hand_built_one():
  # L = 4 in blocks of 2: rows (queries) and columns (keys) are noisy 0-3, then clean 0-3.
  expected = np.array([
      # noisy 0-3 | clean 0-3
      [1, 1, 0, 0, 0, 0, 0, 0],
      [1, 1, 0, 0, 0, 0, 0, 0],
      [0, 0, 1, 1, 1, 1, 0, 0],
      [0, 0, 1, 1, 1, 1, 0, 0],
      [0, 0, 0, 0, 1, 1, 0, 0],
      [0, 0, 0, 0, 1, 1, 0, 0],
      [0, 0, 0, 0, 1, 1, 1, 1],
      [0, 0, 0, 0, 1, 1, 1, 1]], bool)
  np.testing.assert_array_equal(diffusion.block_attention_mask(4, 2), expected)
  # One block: the noisy row attends to itself only; K = 1: the clean row is causal.
  full, single = diffusion.block_attention_mask(3, 3), diffusion.block_attention_mask(3, 1)
  assert full[:3, :3].all() and not full[:3, 3:].any()
  np.testing.assert_array_equal(single[3:, 3:], np.tril(np.ones((3, 3), bool)))
  np.testing.assert_array_equal(single[:3, 3:], np.tril(np.ones((3, 3), bool), -1))


def tiny_model():
  graphdef = model_lib.abstract_model(TINY)[0]
  return model_lib.make_logits_fn(graphdef), model_lib.init_params(TINY, jax.random.key(0))


def block_draws(key, tokens, valid, block, schedule, t_range=(0.0, 1.0)):
  """The loss's own draws, made again: each block's t, the noisy row and its masks."""
  batch, length = tokens.shape
  t_key, mask_key = jax.random.split(key)
  t = diffusion.antithetic_times(t_key, batch * (length // block)).reshape(-1, batch).T
  t = t_range[0] + (t_range[1] - t_range[0]) * t
  xt, masked = diffusion.corrupt(mask_key, tokens, valid,
                                 jnp.repeat(schedule.alpha(t), block, axis=1), MASK_ID)
  return t, xt, masked


def test_one_block_is_the_full_sequence_loss():
  logits_fn, params = tiny_model()
  tokens = jax.random.randint(jax.random.key(1), (4, 12), 0, DATA_VOCAB - 1)
  batch = {'tokens': tokens, 'valid': jnp.arange(12)[None, :] < jnp.array([12, 9, 12, 4])[:, None]}
  make = lambda **kw: diffusion.make_loss_fn(logits_fn, diffusion.Schedule('linear'), MASK_ID,
                                             DATA_VOCAB, **kw)(params, batch, jax.random.key(3))
  today = make()
  for block_size in (0, 12):
    chex.assert_trees_all_equal(make(block_size=block_size), today)


@pytest.mark.parametrize('block', [1, 3, 4])
def test_the_side_by_side_pass_equals_a_pass_per_block(block):
  """Every block scored in one 2L pass equals L/K passes, block b's run on the clean blocks
  before it and its own noisy block under the block-causal mask."""
  logits_fn, params = tiny_model()
  schedule = diffusion.Schedule('cosine')
  tokens = jax.random.randint(jax.random.key(1), (3, 12), 0, DATA_VOCAB - 1)
  valid = jnp.arange(12)[None, :] < jnp.array([12, 10, 5])[:, None]
  key = jax.random.key(4)
  loss, aux = diffusion.make_loss_fn(logits_fn, schedule, MASK_ID, DATA_VOCAB,
                                     block_size=block)(params, {'tokens': tokens, 'valid': valid},
                                                       key)
  t, xt, masked = block_draws(key, tokens, valid, block, schedule)
  nelbo = 0.0
  for b in range(12 // block):
    end = (b + 1) * block
    inputs = jnp.concatenate([tokens[:, :end - block], xt[:, end - block:end]], axis=1)
    causal = np.arange(end)[None, :] // block <= np.arange(end)[:, None] // block
    logits = logits_fn(params, inputs, jnp.asarray(causal)[None] & valid[:, None, :end])
    ce = diffusion.cross_entropy(logits[:, -block:], tokens[:, end - block:end], MASK_ID,
                                 DATA_VOCAB)
    nelbo += jnp.sum(schedule.weight(t[:, b])[:, None] * jnp.where(
        masked[:, end - block:end], ce, 0.0))
  n = valid.sum()
  nelbo += schedule.end_terms_per_token(diffusion.num_classes(MASK_ID, DATA_VOCAB)) * n
  np.testing.assert_allclose(loss, nelbo / n, rtol=1e-5)
  assert int(aux['masked']) == int(masked.sum()) > 0


def test_one_token_blocks_score_the_exact_next_token_conditionals():
  """K = 1: a masked token is predicted from the clean tokens before it alone, so its
  cross-entropy is the exact -log p(x_l | x_<l) of the model's one-token conditionals (the
  network run causally on x_<l and a mask), whatever t is. Each token is masked with
  probability 1 - alpha(t) and weighted w(t): their product -alpha'(t) is 1 - 2 eps for the
  linear schedule, so the loss's mean is that NLL at every t, here t = 0.3 and t = 0.9."""
  logits_fn, params = tiny_model()
  causal_fn = model_lib.make_logits_fn(
      model_lib.abstract_model(dataclasses.replace(TINY, causal=True))[0])
  schedule = diffusion.Schedule('linear')
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, DATA_VOCAB - 1)
  valid = jnp.ones_like(tokens, bool)
  nll = np.zeros((2, 8))
  for l in range(8):
    inputs = jnp.concatenate([tokens[:, :l], jnp.full((2, 1), MASK_ID)], axis=1)
    nll[:, l] = diffusion.cross_entropy(causal_fn(params, inputs)[:, -1:], tokens[:, l:l + 1],
                                        MASK_ID, DATA_VOCAB)[:, 0]
  ends = schedule.end_terms_per_token(diffusion.num_classes(MASK_ID, DATA_VOCAB))

  for seed, t in enumerate((0.3, 0.9)):
    loss_fn = diffusion.make_loss_fn(logits_fn, schedule, MASK_ID, DATA_VOCAB, block_size=1,
                                     t_range=(t, t))
    loss_at = lambda key, loss_fn=loss_fn: loss_fn(params, {'tokens': tokens, 'valid': valid},
                                                   key)[0]
    _, _, masked = block_draws(jax.random.key(0), tokens, valid, 1, schedule, (t, t))
    expected = schedule.weight(t) * np.sum(np.where(masked, nll, 0.0)) / 16 + ends
    np.testing.assert_allclose(loss_at(jax.random.key(0)), expected, rtol=1e-5)
    draws = jax.jit(jax.vmap(loss_at))(jax.random.split(jax.random.key(seed), 256))
    mean, stderr = float(draws.mean()), float(draws.std()) / 16
    np.testing.assert_allclose(mean, (1 - 2 * schedule.eps) * nll.mean() + ends,
                               atol=4 * stderr)
