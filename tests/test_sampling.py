"""Fixed-cost samplers and the Monte Carlo conditional likelihood."""

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import count_compilations
from dllm_jax import autoregressive
from dllm_jax import diffusion
from dllm_jax import model as model_lib
from dllm_jax import sampling
from dllm_jax import sharding
from dllm_jax.config import base_config

V, MASK, EOS = 32, 30, 29  # data ids 0..30 (30 is the mask), 2 padded logits
CFG = model_lib.ModelConfig(vocab_size=V + 2, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                            head_dim=8, mlp_dim=64)
sample_jit = jax.jit(sampling.sample, static_argnums=(0, 4, 5), static_argnames='decode_fn')


@pytest.fixture(scope='module')
def tiny():
  params = model_lib.init_params(CFG, jax.random.key(0))
  params['lm_head'] = params['lm_head'] * 50.0  # peaked, so argmax ties are rare
  return model_lib.make_logits_fn(model_lib.abstract_model(CFG)[0]), params


def settings(**kw):
  return sampling.SamplerConfig(mask_id=MASK, vocab_size=V, eos_id=EOS, **kw)


def prompt_canvas(batch=2, prompt_len=5, gen_length=16, seed=0):
  prompt = jax.random.randint(jax.random.key(seed), (batch, prompt_len), 0, 28)
  return jnp.concatenate([prompt, jnp.full((batch, gen_length), MASK)], axis=1)


def infill_canvas():
  """Masks in several runs between given tokens; rows differ in where the masks are."""
  rng = np.random.default_rng(0)
  canvas = rng.integers(0, 28, (3, 24))
  for row in range(3):
    canvas[row, rng.random(24) < 0.3 + 0.2 * row] = MASK
  return jnp.asarray(canvas)


def recording(logits_fn, log):
  """logits_fn that records, at run time, every canvas it is called on."""
  def wrapped(params, tokens, mask=None):
    jax.debug.callback(lambda t: log.append(np.asarray(t)), tokens, ordered=True)
    return logits_fn(params, tokens, mask)
  return wrapped


@pytest.mark.parametrize('sampler', sampling.SAMPLERS)
def test_fills_every_mask_and_keeps_given_tokens(tiny, sampler):
  logits_fn, params = tiny
  canvas = infill_canvas()
  out = sample_jit(logits_fn, params, canvas, jax.random.key(1),
                   settings(sampler=sampler, steps=8, temperature=1.0), 0)
  tokens, commit = np.asarray(out.tokens), np.asarray(out.commit_step)
  given = np.asarray(canvas) != MASK
  np.testing.assert_array_equal(tokens[given], np.asarray(canvas)[given])
  assert not np.any(tokens == MASK) and np.all(tokens < V)
  assert np.all(commit[given] == -1) and np.all((commit[~given] >= 0) & (commit[~given] < 8))


def test_deterministic_given_the_key(tiny):
  logits_fn, params = tiny
  cfg = settings(steps=8, block_length=8, temperature=1.0)
  run = lambda seed: np.asarray(sample_jit(logits_fn, params, prompt_canvas(),
                                           jax.random.key(seed), cfg, 5).tokens)
  np.testing.assert_array_equal(run(0), run(0))
  assert not np.array_equal(run(0), run(1))


def test_commits_the_scheduled_number_per_step_in_each_block(tiny):
  logits_fn, params = tiny
  canvas = infill_canvas()
  steps, block = 9, 8  # 3 blocks of 8 positions, 3 steps each
  out = sample_jit(logits_fn, params, canvas, jax.random.key(0),
                   settings(steps=steps, block_length=block), 0)
  commit = np.asarray(out.commit_step)
  for row in range(canvas.shape[0]):
    first = 0  # the row's first step in the block
    for b in range(3):
      region = commit[row, b * block:(b + 1) * block]
      m = int(np.sum(np.asarray(canvas)[row, b * block:(b + 1) * block] == MASK))
      expected = [m // 3 + (j < m % 3) for j in range(3)]
      while expected and not expected[-1]:  # a block ends (early) once it has no masks
        expected.pop()
      got = [int(np.sum(region == first + j)) for j in range(len(expected))]
      assert got == expected, (row, b, m)
      first += len(expected)
    assert int(out.nfe[row]) == first


@pytest.mark.parametrize('sampler', ['low_confidence', 'ancestral'])
def test_committed_tokens_never_change(tiny, sampler):
  logits_fn, params = tiny
  log = []
  canvas = prompt_canvas(gen_length=16)
  out = sampling.sample(recording(logits_fn, log), params, canvas, jax.random.key(3),
                        settings(sampler=sampler, steps=8, block_length=8, temperature=1.0), 5)
  jax.block_until_ready(out)
  frames = log + [np.asarray(out.tokens)]
  for before, after in zip(frames, frames[1:]):
    kept = before != MASK
    np.testing.assert_array_equal(after[kept], before[kept])


@pytest.mark.parametrize('cfg_scale', [0.0, 1.5])
def test_model_is_called_exactly_steps_times(tiny, cfg_scale):
  logits_fn, params = tiny
  log = []
  out = sampling.sample(recording(logits_fn, log), params, prompt_canvas(), jax.random.key(0),
                        settings(steps=12, block_length=4, cfg_scale=cfg_scale), 5)
  jax.block_until_ready(out)
  assert len(log) == 12
  assert log[0].shape[0] == (4 if cfg_scale else 2)  # guidance doubles the batch, not the calls


def test_same_shapes_compile_once(tiny):
  logits_fn, params = tiny
  traces = []

  def counting(p, t, m=None):
    traces.append(t.shape)
    return logits_fn(p, t, m)

  run = jax.jit(sampling.sample, static_argnums=(0, 4, 5))
  cfg = settings(steps=4, block_length=8)
  for seed in range(3):
    run(counting, params, prompt_canvas(seed=seed), jax.random.key(seed), cfg, 5)
  assert len(traces) == 1
  run(counting, params, prompt_canvas(batch=3), jax.random.key(0), cfg, 5)
  assert len(traces) == 2


def python_loop_reference(logits_fn, params, canvas):
  """One token per step: the most confident masked position takes its argmax token."""
  x = np.array(canvas)
  while np.any(x == MASK):
    logits = np.asarray(logits_fn(params, jnp.asarray(x)), np.float64)
    logits[..., MASK] = -np.inf
    logits[..., V:] = -np.inf
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for row in range(x.shape[0]):
      masked = np.flatnonzero(x[row] == MASK)
      best = masked[np.argmax(probs[row, masked].max(-1))]
      x[row, best] = np.argmax(probs[row, best])
  return x


def test_matches_a_python_loop_reference_token_for_token(tiny):
  logits_fn, params = tiny
  canvas = prompt_canvas(batch=3, prompt_len=4, gen_length=12)
  out = sample_jit(logits_fn, params, canvas, jax.random.key(0), settings(steps=12), 4)
  np.testing.assert_array_equal(out.tokens, python_loop_reference(logits_fn, params, canvas))


@pytest.mark.parametrize('block_cache, sampler', [(False, 'low_confidence'),
                                                   (True, 'low_confidence'),
                                                   (False, 'threshold'), (True, 'factor')])
def test_sharded_sampling_matches_unsharded(tiny, block_cache, sampler):
  logits_fn, params = tiny
  graphdef, abstract, axes = model_lib.abstract_model(CFG)
  decode_fn = model_lib.make_decode_fn(graphdef)
  config = base_config()
  config.mesh.update(data=2, fsdp=2, tensor=2)
  mesh = sharding.make_mesh(config.mesh)
  canvas = prompt_canvas(batch=4)
  cfg = settings(sampler=sampler, steps=16, block_length=8, block_cache=block_cache,
                 threshold=0.3)
  run = lambda params: jax.jit(sampling.sample, static_argnums=(0, 4, 5),
                               static_argnames='decode_fn')(
      logits_fn, params, canvas, jax.random.key(0), cfg, 5, decode_fn=decode_fn).tokens
  expected = run(params)
  with sharding.use_mesh(mesh, config.logical_axis_rules):
    got = run(jax.device_put(params, sharding.tree_shardings(mesh, config.logical_axis_rules,
                                                             axes, abstract)))
  np.testing.assert_array_equal(got, expected)


def draw(key, logits_1xNxV, temperature):
  return sampling.draw_rows(jax.random.split(key, logits_1xNxV.shape[:2]), logits_1xNxV,
                            jnp.full((1,), temperature))


def test_draws_keep_a_one_in_a_thousand_tail():
  probs = np.array([0.6, 0.299, 0.1, 0.001])
  logits = jnp.log(jnp.asarray(probs, jnp.float32))[None, None, :]
  n = 400_000
  draws = draw(jax.random.key(0), jnp.broadcast_to(logits, (1, n, 4)), 1.0)
  freq = np.bincount(np.asarray(draws).ravel(), minlength=4) / n
  sigma = np.sqrt(probs * (1 - probs) / n)
  assert np.all(np.abs(freq - probs) < 4 * sigma), (freq, probs)
  assert freq[3] > 0.0007


@pytest.mark.slow
def test_rare_tokens_of_a_large_vocabulary_are_drawn_at_their_softmax_rate():
  """One likely token and 2^17 - 1 rare ones, each 17 nats below it: together 0.54% of the
  mass. A float32 Gumbel draw capped near 16 draws them at about a sixth of that rate (4 in
  4,096 draws instead of 22; Zheng et al. 2024); an exact one within the binomial interval.
  Cost: about 5e8 noise values (an rbg key, the fastest on CPU)."""
  vocab, gap, rows, positions, chunks = 2**17, 17.0, 4, 64, 16
  odds = (vocab - 1) * math.exp(-gap)
  p_rare = odds / (1 + odds)

  @jax.jit
  def rare_draws(key):
    def chunk(key):
      logits = jnp.full((rows, positions, vocab), -gap).at[:, :, 0].set(0.0)
      drawn = sampling.draw_rows(jax.random.split(key, (rows, positions)), logits,
                                 jnp.ones(rows))
      return jnp.sum(drawn != 0)
    return jnp.sum(jax.lax.map(chunk, jax.random.split(key, chunks)))

  n = rows * positions * chunks
  rare = int(rare_draws(jax.random.key(0, impl='rbg')))
  sigma = math.sqrt(n * p_rare * (1 - p_rare))
  assert abs(rare - n * p_rare) < 3 * sigma, (rare, n * p_rare, sigma)


def test_temperature_sharpens_and_zero_is_argmax():
  logits = jnp.log(jnp.array([0.5, 0.3, 0.2]))[None, None, :]
  many = jnp.broadcast_to(logits, (1, 50_000, 3))
  cold = np.bincount(np.asarray(draw(jax.random.key(0), many, 0.5)).ravel(), minlength=3)
  assert cold[0] / 50_000 == pytest.approx(0.25 / 0.38, abs=0.01)  # p^2 renormalised
  assert np.all(np.asarray(draw(jax.random.key(0), many, 0.0)) == 0)


def test_top_k_top_p_and_forbidden_ids():
  logits = jnp.log(jnp.array([0.4, 0.3, 0.15, 0.1, 0.05] + [1e-3] * 27))[None, None, :]
  logits = logits.at[..., EOS].set(10.0)  # EOS would win ...
  filtered = lambda logits, cfg: sampling.filter_logits(logits, cfg,
                                                         sampling.row_settings(cfg, 1, 1))
  out = filtered(logits, settings(forbid_eos=True, top_k=3))
  assert np.isfinite(np.asarray(out)).sum() == 3  # ... but is forbidden; top 3 remain
  assert np.all(np.isfinite(np.asarray(out[0, 0, :3])))
  out = filtered(logits, settings(forbid_eos=True, top_p=0.8))
  assert np.flatnonzero(np.isfinite(np.asarray(out[0, 0]))).tolist() == [0, 1, 2]
  out = filtered(jnp.zeros((1, 1, V + 2)), settings())
  assert not np.isfinite(np.asarray(out[0, 0, [MASK, V, V + 1]])).any()


def test_guidance_combines_conditional_and_prompt_masked_passes():
  seen = []

  def fake(params, tokens, mask=None):
    seen.append(tokens)
    # Logit 0 counts unmasked tokens in the row: the guided pass sees the prompt masked.
    count = jnp.sum(tokens != MASK, axis=1).astype(jnp.float32)
    return jnp.zeros(tokens.shape + (V,)).at[:, :, 0].set(count[:, None])

  canvas = prompt_canvas(batch=1, prompt_len=5, gen_length=3)
  logits, _ = sampling._guided(lambda tokens: (fake(None, tokens), None), canvas,
                               canvas != MASK, MASK, jnp.array([2.0]))
  cond, uncond = 5.0, 0.0
  np.testing.assert_allclose(logits[0, :, 0], uncond + 3.0 * (cond - uncond))
  assert np.all(np.asarray(seen[0][1]) == MASK)


def test_ancestral_single_step_fills_everything(tiny):
  logits_fn, params = tiny
  out = sample_jit(logits_fn, params, prompt_canvas(), jax.random.key(0),
                   settings(sampler='ancestral', steps=1, time_grid='cosine'), 5)
  assert not np.any(np.asarray(out.tokens) == MASK)


def test_ancestral_unmasks_at_the_schedule_rate():
  """With a linear schedule and a uniform grid, about 1/steps of the masks open per step."""
  steps, n = 4, 4000
  uniform = lambda p, t, m=None: jnp.zeros(t.shape + (V,))
  canvas = jnp.full((1, n), MASK)
  out = sampling.sample(uniform, None, canvas, jax.random.key(0),
                        settings(sampler='ancestral', steps=steps, temperature=1.0), 0)
  per_step = np.bincount(np.asarray(out.commit_step).ravel(), minlength=steps) / n
  np.testing.assert_allclose(per_step, 1 / steps, atol=0.03)


def one_layer():
  cfg = dataclasses.replace(CFG, n_layers=1)
  params = model_lib.init_params(cfg, jax.random.key(0))
  params['lm_head'] = params['lm_head'] * 50.0
  graphdef = model_lib.abstract_model(cfg)[0]
  return model_lib.make_logits_fn(graphdef), model_lib.make_decode_fn(graphdef), params


@pytest.mark.parametrize('kw', [dict(), dict(sampler='margin', cfg_scale=1.5),
                                dict(sampler='entropy', top_k=5),
                                dict(sampler='threshold', threshold=0.5, top_p=0.9),
                                dict(sampler='entropy_bound', entropy_bound=1.0)])
def test_block_cache_is_exact_for_one_layer(kw):
  """A one-layer model's keys and values depend on each token alone, so reusing those of
  the positions outside the block loses nothing: the same tokens, step for step."""
  logits_fn, decode_fn, params = one_layer()
  canvas = prompt_canvas(batch=3, prompt_len=5, gen_length=16)
  valid = jnp.ones(canvas.shape, bool).at[0, :2].set(False)  # a left-padded prompt
  cfg = settings(steps=8, block_length=4, **kw)
  exact = sample_jit(logits_fn, params, canvas, jax.random.key(0), cfg, 5, valid)
  cached = sample_jit(logits_fn, params, canvas, jax.random.key(0),
                      dataclasses.replace(cfg, block_cache=True), 5, valid, decode_fn=decode_fn)
  np.testing.assert_array_equal(cached.tokens, exact.tokens)
  np.testing.assert_array_equal(cached.commit_step, exact.commit_step)
  np.testing.assert_array_equal(cached.nfe, exact.nfe)


@pytest.mark.parametrize('cfg_scale', [0.0, 1.5])
def test_block_cache_runs_the_canvas_once_per_block_then_the_block(tiny, cfg_scale):
  _, params = tiny
  decode_fn = model_lib.make_decode_fn(model_lib.abstract_model(CFG)[0])
  log = []

  def recording_decode(params, tokens, cache, start, valid):
    jax.debug.callback(lambda t: log.append(np.asarray(t)), tokens, ordered=True)
    return decode_fn(params, tokens, cache, start, valid)

  canvas = prompt_canvas(gen_length=16)
  steps, block = 12, 4  # 4 blocks, 3 steps each
  out = sample_jit(None, params, canvas, jax.random.key(0),
                   settings(steps=steps, block_length=block, temperature=1.0,
                            cfg_scale=cfg_scale, block_cache=True), 5,
                   decode_fn=recording_decode)
  rows = 4 if cfg_scale else 2
  assert [t.shape for t in log] == [(rows, 21), (rows, block), (rows, block)] * 4
  frames = [t[:2] for t in log[::3]] + [np.asarray(out.tokens)]
  for before, after in zip(frames, frames[1:]):  # nothing committed or given ever changes
    kept = before != MASK
    np.testing.assert_array_equal(after[kept], before[kept])
  commit = np.asarray(out.commit_step)
  for b in range(4):  # 4 masks in 3 steps: 2, 1, 1, each in its own block
    region = commit[:, 5 + b * block:5 + (b + 1) * block]
    assert sorted(region[0].tolist()) == [3 * b, 3 * b, 3 * b + 1, 3 * b + 2], region


def test_new_settings_compile_nothing(tiny):
  """Only the shape, the network and guidance on or off are compiled in: once a call with
  and one without guidance have run, other samplers, steps, blocks, temperatures, filters,
  guidance weights and seeds reuse their programs."""
  logits_fn, params = tiny
  canvas = prompt_canvas(gen_length=16)
  run = lambda seed, **kw: jax.block_until_ready(sampling.sample(
      logits_fn, params, canvas, jax.random.key(seed), settings(**kw), 5))
  run(0)
  run(0, cfg_scale=1.0)
  variants = [dict(sampler='ancestral', steps=5, temperature=1.0, top_p=0.9),
              dict(sampler='margin', steps=16, block_length=4, top_k=3),
              dict(sampler='entropy', steps=8, block_length=8, temperature=0.5, cfg_scale=2.0),
              dict(sampler='random', steps=4, forbid_eos=True),
              dict(sampler='low_confidence', steps=16, block_length=2, temperature=0.7,
                   top_k=5, top_p=0.5, cfg_scale=0.5)]
  with count_compilations() as compiled:
    for seed, kw in enumerate(variants):
      out = run(seed, **kw)
      assert not np.any(np.asarray(out.tokens) == MASK)
  assert not compiled, f'{len(compiled)} compilations'


@pytest.mark.parametrize('sampler', ['low_confidence', 'ancestral'])
def test_a_rows_draws_do_not_depend_on_how_far_its_prompt_is_padded(tiny, sampler):
  """Noise is indexed from the generation's start, so a seeded answer is the same whatever
  left padding a batch or a bucket gives its prompt."""
  logits_fn, params = tiny
  canvas = prompt_canvas(batch=1, gen_length=16)
  padded = jnp.concatenate([jnp.zeros((1, 7), jnp.int32), canvas], axis=1)
  cfg = settings(sampler=sampler, steps=8, block_length=8, temperature=1.0)
  alone = sampling.sample(logits_fn, params, canvas, jax.random.key(4), cfg, 5)
  shifted = sampling.sample(logits_fn, params, padded, jax.random.key(4), cfg, 12,
                            jnp.arange(28)[None, :] >= 7)
  np.testing.assert_array_equal(alone.tokens[:, 5:], shifted.tokens[:, 12:])
  np.testing.assert_array_equal(alone.commit_step[:, 5:], shifted.commit_step[:, 12:])


@pytest.mark.parametrize('sampler', ['low_confidence', 'ancestral'])
def test_prompt_masks_stay_unless_asked_to_be_filled(tiny, sampler):
  logits_fn, params = tiny
  canvas = prompt_canvas(gen_length=8).at[:, 1].set(MASK)
  cfg = settings(sampler=sampler, steps=8, block_length=4)
  kept = sampling.sample(logits_fn, params, canvas, jax.random.key(0), cfg, 5)
  assert np.all(np.asarray(kept.tokens[:, 1]) == MASK)
  assert not np.any(np.asarray(kept.tokens[:, 5:]) == MASK)
  cfg = dataclasses.replace(cfg, fill_prompt_masks=True)
  filled = np.asarray(sampling.sample(logits_fn, params, canvas, jax.random.key(0), cfg,
                                      5).tokens)
  # Ancestral fills every mask; remasking commits as many tokens as the blocks have masks,
  # and the prompt's mask competes for them, so one mask is left somewhere (as in LLaDA).
  left = 0 if sampler == 'ancestral' else 1
  np.testing.assert_array_equal(np.sum(filled == MASK, axis=1), [left, left])
  with pytest.raises(sampling.SamplingError, match='fill_prompt_masks: not with block_cache'):
    sampling.validate(dataclasses.replace(cfg, sampler='low_confidence', block_cache=True),
                      13, 5)


def test_block_cache_needs_a_remasking_sampler_and_the_decode_fn(tiny):
  logits_fn, params = tiny
  with pytest.raises(sampling.SamplingError, match='block_cache: needs a remasking sampler'):
    sampling.validate(settings(sampler='ancestral', block_cache=True), 21, 5)
  with pytest.raises(sampling.SamplingError, match='block_cache: needs the network'):
    sampling.sample(logits_fn, params, prompt_canvas(), jax.random.key(0),
                    settings(steps=4, block_length=8, block_cache=True), 5)


@pytest.mark.parametrize('kwargs, canvas_len, gen_start, message', [
    (dict(steps=0), 21, 5, 'steps: must be >= 1'),
    (dict(steps=8, block_length=5), 21, 5, 'block_length: 5 must divide gen_length=16'),
    (dict(steps=6, block_length=4), 21, 5, 'steps: 6 must be a multiple of the number of blocks'),
    (dict(sampler='greedy'), 21, 5, "sampler: 'greedy' is not one of"),
    (dict(top_p=0.0), 21, 5, 'top_p'),
    (dict(sampler='threshold', threshold=1.5), 21, 5, r'threshold: must be in \[0, 1\]'),
    (dict(sampler='factor', factor=-1.0), 21, 5, 'factor: must be >= 0'),
    (dict(entropy_bound=-0.1), 21, 5, 'entropy_bound: must be >= 0'),
    (dict(), 21, 21, 'leaves no room'),
])
def test_bad_settings_are_clear_errors(kwargs, canvas_len, gen_start, message):
  with pytest.raises(sampling.SamplingError, match=message):
    sampling.validate(settings(**kwargs), canvas_len, gen_start)


def _exact_expected_nll(logits_fn, params, prompt, answer):
  """E over l ~ U{1..A} and a uniform l-subset of (A / l) * sum of masked CE, enumerated."""
  a = len(answer)
  sequence = np.concatenate([prompt, answer])
  total = 0.0
  for l in range(1, a + 1):
    subsets = list(itertools.combinations(range(a), l))
    for subset in subsets:
      tokens = sequence.copy()
      tokens[len(prompt) + np.array(subset)] = MASK
      logits = logits_fn(params, jnp.asarray(tokens)[None])
      ce = diffusion.cross_entropy(logits, jnp.asarray(sequence)[None], MASK, V)[0]
      total += (a / l) * float(ce[len(prompt) + np.array(subset)].sum()) / len(subsets) / a
  return total


def test_mc_likelihood_agrees_with_exact_enumeration(tiny):
  logits_fn, _ = tiny
  params = model_lib.init_params(CFG, jax.random.key(5))  # smooth logits: moderate variance
  prompt, answer = np.array([3, 7, 1, 4]), np.array([9, 2, 11, 5])
  exact = _exact_expected_nll(logits_fn, params, prompt, answer)
  nll, stderr = sampling.conditional_nll(logits_fn, params, prompt, answer, jax.random.key(0),
                                         mask_id=MASK, vocab_size=V, mc_num=512, batch_size=32)
  assert 0 < float(stderr) < 0.05 * exact
  assert abs(float(nll) - exact) < 4 * float(stderr), (float(nll), exact, float(stderr))


def test_multiple_choice_picks_the_answer_the_model_prefers(tiny):
  """The answer the model itself produces scores best among distractors."""
  logits_fn, params = tiny
  prompt = np.array([3, 7, 1, 4, 8])
  canvas = jnp.asarray(np.concatenate([prompt, [MASK] * 4]))[None]
  own = np.asarray(sample_jit(logits_fn, params, canvas, jax.random.key(0),
                              settings(steps=4), 5).tokens[0, 5:])
  choices = [jnp.asarray((own + shift) % 28) for shift in (5, 0, 11)]
  best, nlls = sampling.multiple_choice(logits_fn, params, jnp.asarray(prompt), choices,
                                        jax.random.key(1), mask_id=MASK, vocab_size=V,
                                        mc_num=64, batch_size=16)
  assert best == 1 and all(math.isfinite(n) for n in nlls)
  # Other prompts and answers within the same length buckets compile nothing new, and an
  # answer scored alone or among others gets the same estimate (the same random numbers).
  shorter = [np.asarray(c)[:3] for c in choices]
  with count_compilations() as compiled:
    again = sampling.multiple_choice(logits_fn, params, prompt[:3], shorter,
                                     jax.random.key(1), mask_id=MASK, vocab_size=V,
                                     mc_num=64, batch_size=16)[1]
  assert not compiled
  alone = sampling.conditional_nll(logits_fn, params, prompt[:3], shorter[1],
                                   jax.random.key(1), mask_id=MASK, vocab_size=V, mc_num=64,
                                   batch_size=16)[0]
  assert float(alone) == pytest.approx(again[1], rel=1e-5)


def test_rows_with_their_own_settings_sample_as_they_would_alone(tiny):
  """What the server relies on to batch requests: each row of `sample_rows` has its own key,
  sampler settings and generation length (shorter rows padded on the right, out of
  attention), and comes out as it does when sampled alone at its own length."""
  logits_fn, params = tiny
  run = jax.jit(sampling.sample_rows, static_argnums=(0, 6, 7), static_argnames='guided')
  base = settings()
  prompt, lengths = prompt_canvas(batch=3, gen_length=0), [16, 8, 12]
  rows = [dict(steps=8, block_length=4, temperature=0.0, top_k=0, top_p=1.0, cfg_scale=0.0,
               threshold=0.5, factor=1.0, entropy_bound=0.5, stop_at_eos=False),
          dict(steps=8, block_length=8, temperature=1.0, top_k=5, top_p=1.0, cfg_scale=1.0,
               threshold=0.9, factor=2.0, entropy_bound=0.1, stop_at_eos=True),
          dict(steps=6, block_length=6, temperature=0.7, top_k=0, top_p=0.9, cfg_scale=0.0,
               threshold=0.2, factor=0.5, entropy_bound=2.0, stop_at_eos=False)]
  keys = jax.random.split(jax.random.key(7), 3)

  def settings_of(row_list, gen):
    cols = {f: jnp.asarray([r[f] for r in row_list]) for f in row_list[0]}
    return sampling.RowSettings(gen_length=jnp.asarray(gen, jnp.int32),
                                forbid_eos=jnp.zeros(len(gen), bool), **cols)

  canvas = jnp.concatenate([prompt, jnp.full((3, 16), MASK)], axis=1)
  valid = jnp.ones(canvas.shape, bool)
  for row, n in enumerate(lengths):
    canvas = canvas.at[row, 5 + n:].set(0)
    valid = valid.at[row, 5 + n:].set(False)
  for sampler_index in map(sampling.SAMPLERS.index, ['low_confidence', 'ancestral',
                                                     'threshold', 'entropy_bound']):
    together = run(logits_fn, params, canvas, keys, settings_of(rows, lengths), sampler_index,
                   base, 5, valid, guided=True)
    for row, n in enumerate(lengths):
      alone = run(logits_fn, params, canvas[row:row + 1, :5 + n], keys[row:row + 1],
                  settings_of(rows[row:row + 1], [n]), sampler_index, base, 5, None,
                  guided=True)
      np.testing.assert_array_equal(together.tokens[row, :5 + n], alone.tokens[0])
      np.testing.assert_array_equal(together.commit_step[row, :5 + n], alone.commit_step[0])
      assert int(together.nfe[row]) == int(alone.nfe[0]) <= rows[row]['steps']
      assert not np.any(np.asarray(alone.tokens) == MASK)
      # A row stops changing after its own steps, whatever the batch's longest row needs.
      assert int(together.commit_step[row, 5:5 + n].max()) < rows[row]['steps']


def test_argmax_matches_jnp_argmax_on_ties_infinities_and_nans():
  x = np.random.default_rng(0).integers(0, 3, (64, 9)).astype(np.float32)  # many ties
  x[1] = -np.inf
  x[2, 4] = np.inf
  x[3, [2, 6]] = np.nan  # jnp.argmax takes the first NaN as the maximum
  x[4] = np.nan
  x[5, 0] = -np.inf
  for fn in (sampling.argmax, jax.jit(sampling.argmax)):
    out = fn(jnp.asarray(x))
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(out, jnp.argmax(jnp.asarray(x), axis=-1))


# ---- adaptive committers and early exit


def adaptive_reference(logits_fn, params, canvas, gen_start, block, rule, bound):
  """NumPy, one row at a time: greedy decoding with one-token-per-step blocks whose steps
  commit the candidates of `rule` (a block's most probable first), at least one; returns
  the tokens and the model calls each row used."""
  x, nfe = np.array(canvas), np.zeros(len(canvas), int)
  for row in range(len(x)):
    for lo in range(gen_start, x.shape[1], block):
      while np.any(x[row, lo:lo + block] == MASK):
        logits = np.asarray(logits_fn(params, jnp.asarray(x[row:row + 1])), np.float64)[0]
        logits[:, MASK] = logits[:, V:] = -np.inf
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        masked = lo + np.flatnonzero(x[row, lo:lo + block] == MASK)
        top = probs[masked].max(-1)
        p = probs[masked]
        entropy = -np.sum(p * np.log(np.where(p > 0, p, 1)), -1)
        order = np.argsort(entropy, kind='stable') if rule == 'entropy_bound' else np.argsort(
            -top, kind='stable')
        n = 0
        while n < len(order):
          if rule == 'threshold':
            ok = top[order[n]] > bound
          elif rule == 'factor':
            ok = (n + 2) * (1 - top[order[n]]) < bound
          else:  # EB-sampler: the summed entropy less its largest term
            ok = entropy[order[:n + 1]].sum() - entropy[order[n]] <= bound
          if not ok:
            break
          n += 1
        for position in masked[order[:max(n, 1)]]:
          x[row, position] = np.argmax(probs[position])
        nfe[row] += 1
  return x, nfe


@pytest.mark.parametrize('rule, bound', [('threshold', 0.9), ('threshold', 0.4),
                                         ('factor', 1.0), ('factor', 3.0),
                                         ('entropy_bound', 0.5), ('entropy_bound', 3.0)])
def test_adaptive_committers_match_a_numpy_reference_of_their_rule(tiny, rule, bound):
  # The tiny model's masked positions are alike, their confidences a few float32 ulps apart,
  # and which comes first would depend on rounding: a fixed bias per position and token
  # spreads them, so the float64 reference and the sampler order them alike.
  model_logits, params = tiny
  bias = 2.0 * jax.random.normal(jax.random.key(7), (1, 20, CFG.vocab_size))
  logits_fn = lambda params, tokens, mask=None: model_logits(params, tokens, mask) + bias
  canvas = prompt_canvas(batch=3, prompt_len=4, gen_length=16)
  out = sample_jit(logits_fn, params, canvas, jax.random.key(0),
                   settings(sampler=rule, steps=16, block_length=8, **{rule: bound}), 4)
  tokens, nfe = adaptive_reference(logits_fn, params, canvas, 4, 8, rule, bound)
  np.testing.assert_array_equal(out.tokens, tokens)
  np.testing.assert_array_equal(out.nfe, nfe)
  assert np.all(nfe < 16) or rule == 'threshold' and bound == 0.9, nfe  # some parallelism


@pytest.mark.parametrize('rule, bound', [('threshold', 1.0), ('factor', 0.0)])
def test_adaptive_at_its_strictest_is_the_one_token_per_step_sampler(tiny, rule, bound):
  logits_fn, params = tiny
  canvas = prompt_canvas(batch=2, gen_length=16)
  for temperature in (0.0, 1.0):
    run = lambda **kw: sample_jit(logits_fn, params, canvas, jax.random.key(4), settings(
        steps=16, block_length=8, temperature=temperature, top_p=0.9, **kw), 5)
    exact, adaptive = run(), run(sampler=rule, **{rule: bound})
    np.testing.assert_array_equal(adaptive.tokens, exact.tokens)
    np.testing.assert_array_equal(adaptive.commit_step, exact.commit_step)
    assert adaptive.nfe.tolist() == exact.nfe.tolist() == [16, 16]


@pytest.mark.parametrize('sampler', ['low_confidence', 'random', 'threshold', 'entropy_bound'])
def test_early_exit_never_changes_tokens(tiny, sampler):
  """A larger step budget lets the fixed schedule idle once its blocks are empty (steps
  that commit nothing): the early exit skips them, with the same draws and tokens."""
  logits_fn, params = tiny
  canvas = infill_canvas()
  run = lambda steps: sample_jit(logits_fn, params, canvas, jax.random.key(2), settings(
      sampler=sampler, steps=steps, block_length=8, temperature=1.0, threshold=0.5), 0)
  budget, double = run(24), run(48)
  np.testing.assert_array_equal(double.tokens, budget.tokens)
  np.testing.assert_array_equal(double.nfe, budget.nfe)
  masks = np.sum(np.asarray(canvas) == MASK, axis=1)
  assert np.all(np.asarray(budget.nfe) <= masks)  # at least one commit per call


@pytest.mark.parametrize('sampler, block_cache', [('threshold', False), ('factor', False),
                                                  ('entropy_bound', True), ('ancestral', False)])
def test_nfe_counts_every_model_call(tiny, sampler, block_cache):
  logits_fn, params = tiny
  decode_fn = model_lib.make_decode_fn(model_lib.abstract_model(CFG)[0])
  log = []

  def recording_decode(params, tokens, cache, start, valid):
    jax.debug.callback(lambda t: log.append(t.shape), tokens, ordered=True)
    return decode_fn(params, tokens, cache, start, valid)

  cfg = settings(sampler=sampler, steps=16, block_length=8, temperature=1.0, factor=2.0,
                 entropy_bound=1.0, threshold=0.3, block_cache=block_cache)
  for batch in (1, 3):
    log.clear()
    canvas = prompt_canvas(batch=batch, gen_length=16)
    out = sampling.sample(recording(logits_fn, log), params, canvas, jax.random.key(batch),
                          cfg, 5, decode_fn=recording_decode)
    jax.block_until_ready(out)
    nfe = np.asarray(out.nfe)
    assert len(log) == nfe.max() and not np.any(np.asarray(out.tokens) == MASK), (log, nfe)
    commit = np.asarray(out.commit_step)[:, 5:]
    for row in range(batch):
      if sampler != 'ancestral':  # every call committed something, in one block
        assert sorted(set(commit[row].tolist())) == list(range(nfe[row]))
        blocks = [set(np.flatnonzero(commit[row] == s) // 8) for s in range(nfe[row])]
        assert all(len(b) == 1 for b in blocks)


def eos_model(eos_at):
  """logits_fn whose argmax at position p is p % 28, or EOS at `eos_at`, more confident to
  the left (so one-per-step greedy decoding goes left to right)."""
  def logits_fn(params, tokens, mask=None):
    del params, mask
    length = tokens.shape[1]
    ids = jnp.where(jnp.arange(length) == eos_at, EOS, jnp.arange(length) % 28)
    peak = 20.0 - 0.5 * jnp.arange(length)
    logits = jax.nn.one_hot(ids, V + 2) * peak[:, None]
    return jnp.broadcast_to(logits, tokens.shape + (V + 2,))
  return logits_fn


@pytest.mark.parametrize('sampler, calls', [('low_confidence', 7), ('threshold', 2)])
def test_stop_at_eos_ends_a_row_once_everything_before_its_eos_is_decided(sampler, calls):
  canvas = prompt_canvas(batch=1, prompt_len=5, gen_length=16)
  run = lambda **kw: sampling.sample(eos_model(eos_at=5 + 6), None, canvas, jax.random.key(0),
                                     settings(sampler=sampler, steps=16, block_length=4,
                                              threshold=0.99, **kw), 5)
  full, stopped = run(), run(stop_at_eos=True)
  assert int(full.nfe[0]) == 16 // (1 if sampler == 'low_confidence' else 4)
  assert int(stopped.nfe[0]) == calls
  np.testing.assert_array_equal(stopped.tokens[0, :12], full.tokens[0, :12])
  assert int(stopped.tokens[0, 11]) == EOS and np.all(np.asarray(stopped.tokens[0, 13:]) == EOS)
  assert np.all(np.asarray(stopped.commit_step[0, 13:]) == calls - 1)


# ---- block diffusion: blocks decoded left to right on an exact key/value cache


def block_causal_logits_fn(logits_fn, block):
  """The block diffusion model run whole, uncached: every position attends block-causally
  (to its own block and the blocks before it), so later blocks, masks or not, change
  nothing before them."""
  def run(params, tokens, valid=None):
    blocks = np.arange(tokens.shape[1]) // block
    mask = jnp.asarray(blocks[None, :] <= blocks[:, None])[None]
    return logits_fn(params, tokens, mask if valid is None else mask & valid[:, None, :])
  return run


@pytest.mark.parametrize('sampler, block, temperature', [
    ('low_confidence', 4, 0.0), ('threshold', 4, 1.0), ('entropy_bound', 8, 0.0)])
def test_block_causal_decoding_equals_the_uncached_model(tiny, sampler, block, temperature):
  """The exact cache changes nothing: the same tokens, steps and model calls as the
  semi-autoregressive sampler running the whole canvas under the block-causal mask (here
  with a left-padded prompt row)."""
  logits_fn, params = tiny
  decode_fn = model_lib.make_decode_fn(model_lib.abstract_model(CFG)[0])
  canvas = prompt_canvas(batch=3, prompt_len=8, gen_length=16)
  valid = jnp.arange(24)[None, :] >= jnp.array([0, 3, 0])[:, None]
  canvas = jnp.where(valid, canvas, 0)
  kw = dict(sampler=sampler, steps=8, block_length=block, temperature=temperature,
            threshold=0.5, entropy_bound=0.5)
  cached = sampling.sample(None, params, canvas, jax.random.key(3),
                           settings(block_causal=True, **kw), 8, valid, decode_fn=decode_fn)
  whole = sampling.sample(block_causal_logits_fn(logits_fn, block), params, canvas,
                          jax.random.key(3), settings(**kw), 8, valid)
  np.testing.assert_array_equal(cached.tokens, whole.tokens)
  np.testing.assert_array_equal(cached.commit_step, whole.commit_step)
  np.testing.assert_array_equal(cached.nfe, whole.nfe)
  assert not np.any(np.asarray(cached.tokens) == MASK)


def test_one_token_blocks_decode_as_the_autoregressive_loop(tiny):
  """K = 1: a block diffusion model is an autoregressive model that reads its prediction of
  position l off a mask at l. Driving autoregressive.generate (prefill, then a scan of
  one-token calls on a key/value cache) with that reading gives the same tokens as the
  block decoder, one model call per token."""
  _, params = tiny
  decode_fn = model_lib.make_decode_fn(model_lib.abstract_model(CFG)[0])

  def mask_reading_decode(params, tokens_BxT, cache, start, key_valid_BxS):
    # The tokens, then a mask after them whose logits predict the next position.
    batch, t = tokens_BxT.shape
    tokens = jnp.concatenate([tokens_BxT, jnp.full((batch, 1), MASK)], axis=1)
    positions = start + jnp.arange(t + 1)
    causal = jnp.arange(key_valid_BxS.shape[1])[None, :] <= positions[:, None]
    logits, cache = decode_fn(params, tokens, cache, start,
                              key_valid_BxS[:, None, :] & causal[None])
    return logits[:, -1:], cache

  prompt = prompt_canvas(batch=2, prompt_len=5, gen_length=0)
  valid = jnp.arange(5)[None, :] >= jnp.array([0, 2])[:, None]
  ar = autoregressive.generate(mask_reading_decode, CFG, params, prompt, valid,
                               jax.random.key(0), autoregressive.DecodeConfig(
                                   mask_id=MASK, vocab_size=V, gen_length=12))
  canvas = jnp.concatenate([prompt, jnp.full((2, 12), MASK)], axis=1)
  out = sampling.sample(None, params, canvas, jax.random.key(0),
                        settings(steps=12, block_length=1, block_causal=True), 5,
                        jnp.concatenate([valid, jnp.ones((2, 12), bool)], axis=1),
                        decode_fn=decode_fn)
  np.testing.assert_array_equal(out.tokens[:, 5:], ar)
  assert out.nfe.tolist() == [12, 12]
