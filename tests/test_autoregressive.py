"""The autoregressive baseline: its loss, KV-cache decoding, and serving it through generate."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import CONFIG_DIR, load_config
from dllm_jax import autoregressive
from dllm_jax import diffusion
from dllm_jax import generate
from dllm_jax import model as model_lib
from dllm_jax import train

CFG = model_lib.ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                            head_dim=8, mlp_dim=64, causal=True)
MASK, VOCAB, BOS = 63, 62, 61


@pytest.fixture(scope='module')
def tiny():
  graphdef = model_lib.abstract_model(CFG)[0]
  params = model_lib.init_params(CFG, jax.random.key(0))
  params['lm_head'] = params['lm_head'] * 30.0  # peaked: no near-ties in greedy decoding
  return model_lib.make_logits_fn(graphdef), model_lib.make_decode_fn(graphdef), params


def full_recomputation(logits_fn, params, prompt, valid, n):
  """Greedy decoding that reruns the whole sequence for every new token."""
  x, mask = np.array(prompt), np.array(valid)
  for _ in range(n):
    logits = np.array(logits_fn(params, jnp.asarray(x), jnp.asarray(mask)))[:, -1]
    logits[:, VOCAB:] = -np.inf
    logits[:, MASK] = -np.inf
    x = np.concatenate([x, logits.argmax(-1)[:, None]], axis=1)
    mask = np.concatenate([mask, np.ones((len(x), 1), bool)], axis=1)
  return x[:, prompt.shape[1]:]


def test_kv_cache_decoding_equals_full_recomputation(tiny):
  logits_fn, decode_fn, params = tiny
  prompt = np.asarray(jax.random.randint(jax.random.key(1), (3, 6), 0, 60))
  valid = np.ones_like(prompt, bool)
  valid[1, :2] = False  # a left-padded row
  cfg = autoregressive.DecodeConfig(mask_id=MASK, vocab_size=VOCAB, gen_length=12)
  out = jax.jit(autoregressive.generate, static_argnums=(0, 1, 6))(
      decode_fn, CFG, params, jnp.asarray(prompt), jnp.asarray(valid), jax.random.key(0), cfg)
  np.testing.assert_array_equal(out, full_recomputation(logits_fn, params, prompt, valid, 12))


def test_decoding_calls_the_model_once_per_new_token_after_one_prefill(tiny):
  _, decode_fn, params = tiny
  widths = []

  def counting(p, tokens, cache, start, key_valid):
    jax.debug.callback(lambda t: widths.append(t.shape[1]), tokens, ordered=True)
    return decode_fn(p, tokens, cache, start, key_valid)

  prompt = jnp.ones((2, 7), jnp.int32)
  cfg = autoregressive.DecodeConfig(mask_id=MASK, vocab_size=VOCAB, gen_length=5,
                                    temperature=1.0)
  jax.block_until_ready(autoregressive.generate(counting, CFG, params, prompt,
                                                jnp.ones_like(prompt, bool), jax.random.key(0),
                                                cfg))
  assert widths == [7, 1, 1, 1, 1]


def test_ar_loss_scores_the_same_tokens_as_the_nelbo(tiny):
  logits_fn, _, params = tiny
  tokens = jax.random.randint(jax.random.key(2), (2, 9), 0, 60)
  valid = jnp.arange(9)[None, :] < jnp.array([[9], [6]])
  batch = {'tokens': tokens, 'valid': valid}
  loss, aux = autoregressive.make_loss_fn(logits_fn, BOS, MASK, VOCAB)(params, batch, None)
  _, nelbo_aux = diffusion.make_loss_fn(logits_fn, diffusion.Schedule('linear'), MASK, VOCAB)(
      params, batch, jax.random.key(0))
  assert float(aux['normalizer']) == float(nelbo_aux['normalizer']) == 15
  # Every valid token, the first predicted from BOS alone.
  expected = []
  for row in range(2):
    for j in range(int(valid[row].sum())):
      context = jnp.concatenate([jnp.array([BOS]), tokens[row, :j]])[None]
      logits = logits_fn(params, context)[:, -1:]
      expected.append(float(diffusion.cross_entropy(logits, tokens[row, j][None, None], MASK,
                                                    VOCAB)[0, 0]))
  np.testing.assert_allclose(float(loss), np.mean(expected), rtol=1e-5)


def test_ar_config_trains_and_generate_serves_it(corpus_dir, tfds_dir, tmp_path):
  config = load_config(os.path.join(CONFIG_DIR, 'ar_small.py'), 'tiny')
  config.data.update(files=corpus_dir, data_dir=tfds_dir)
  config.train.update(num_steps=20, progress_bar=False)
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary['losses'][20] < summary['losses'][1]
  assert len(summary['samples']) == config.sampling.num_samples
  model = generate.load(workdir=str(tmp_path))
  assert model.config.causal
  out = generate.generate(model, ['def f(x):', 'x'], gen_length=12)
  assert [c.commit_step.tolist() for c in out] == [list(range(12))] * 2
  config.mode = 'eval'
  report = train.evaluate_checkpoint(config, str(tmp_path))
  assert report['autoregressive_nll']['stderr_bits'] == 0.0
  assert 0 < report['autoregressive_nll']['bits_per_token'] < 8.1


def test_causal_must_go_with_the_ar_objective():
  from dllm_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.model.causal = True
  with pytest.raises(config_lib.ConfigError, match='config.model.causal'):
    config_lib.validate(config)
