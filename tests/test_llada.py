"""LLaDA checkpoints: conversion, numerics against an independent NumPy forward pass, the
sampler against a NumPy reference of LLaDA's generate(), chat templates, SFT, and errors.

Every model here is a tiny random one in LLaDA's Hugging Face format, written by the test
session itself (dllm_jax.convert.synthetic: safetensors, config.json with LLaDA's field
names, a byte-level BPE tokenizer.json with LLaDA's special tokens)."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import CONFIG_DIR, count_compilations, load_config
from dllm_jax import chat
from dllm_jax import diffusion
from dllm_jax import generate
from dllm_jax import sampling
from dllm_jax import train
from dllm_jax.convert import llada, synthetic
from dllm_jax.data.chat import ChatTemplate


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('llada_hf'))
  synthetic.write_llada(path, shard_bytes=100_000, std=0.2)  # several shards, lively logits
  return path


@pytest.fixture(scope='module')
def gqa_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('llada_gqa'))
  synthetic.write_llada(path, n_heads=4, n_kv_heads=2, seed=1, std=0.2)
  return path


@pytest.fixture(scope='module')
def one_layer_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('llada_1layer'))
  synthetic.write_llada(path, n_layers=1, seed=2, std=0.2)
  return path


@pytest.fixture(scope='module')
def converted(hf_dir, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('converted'))
  llada.convert(hf_dir, out, 'float32')
  return out


def hf_weights(hf_dir):
  weights = {}
  for name in sorted(f for f in os.listdir(hf_dir) if f.endswith('.safetensors')):
    weights.update(load_file(os.path.join(hf_dir, name)))
  with open(os.path.join(hf_dir, 'config.json'), encoding='utf-8') as f:
    return {k: v.astype(np.float64) for k, v in weights.items()}, json.load(f)


def numpy_forward(w, cfg, tokens, attention_mask=None):
  """LLaDA's forward pass written from its description, on the HF tensors (float64)."""
  d, h, kv = cfg['d_model'], cfg['n_heads'], cfg['n_kv_heads']
  hd, eps, p = d // h, cfg['rms_norm_eps'], 'model.transformer.'
  b, n = tokens.shape

  def rms(x, scale):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale

  inv_freq = cfg['rope_theta'] ** (-np.arange(0, hd, 2) / hd)
  angles = np.arange(n)[:, None] * inv_freq[None, :]
  cos, sin = np.cos(np.concatenate([angles] * 2, -1)), np.sin(np.concatenate([angles] * 2, -1))

  def rope(x):  # x [b, n, heads, hd]
    rotated = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], axis=-1)
    return x * cos[None, :, None, :] + rotated * sin[None, :, None, :]

  bias = np.zeros((b, 1, 1, n))
  if attention_mask is not None:
    bias[~attention_mask[:, None, None, :]] = -np.inf
  x = w[f'{p}wte.weight'][tokens]
  for i in range(cfg['n_layers']):
    blk = lambda name: w[f'{p}blocks.{i}.{name}.weight']
    y = rms(x, blk('attn_norm'))
    q = rope((y @ blk('q_proj').T).reshape(b, n, h, hd))
    k = rope((y @ blk('k_proj').T).reshape(b, n, kv, hd))
    v = (y @ blk('v_proj').T).reshape(b, n, kv, hd)
    k, v = np.repeat(k, h // kv, axis=2), np.repeat(v, h // kv, axis=2)
    scores = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(hd) + bias
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    att = np.einsum('bhqk,bkhd->bqhd', scores / scores.sum(-1, keepdims=True), v)
    x = x + att.reshape(b, n, d) @ blk('attn_out').T
    y = rms(x, blk('ff_norm'))
    gate = y @ blk('ff_proj').T
    x = x + ((gate / (1 + np.exp(-gate))) * (y @ blk('up_proj').T)) @ blk('ff_out').T
  return rms(x, w[f'{p}ln_f.weight']) @ w[f'{p}ff_out.weight'].T


def numpy_generate(w, cfg, prompts, attention_mask, *, steps, gen_length, block_length,
                   cfg_scale=0.0, vocab_size):
  """LLaDA's low-confidence remasking at temperature 0, step by step in NumPy.

  Deliberate choices shared with dllm_jax: the mask token and logits past the tokenizer's
  vocabulary are never drawn (LLaDA's reference argmaxes over all logits)."""
  mask_id = cfg['mask_token_id']
  b, prompt_len = prompts.shape
  x = np.concatenate([prompts, np.full((b, gen_length), mask_id)], axis=1)
  full_mask = None
  if attention_mask is not None:
    full_mask = np.concatenate([attention_mask, np.ones((b, gen_length), bool)], axis=1)
  given = x != mask_id
  blocks = gen_length // block_length
  per_block = steps // blocks
  for blk in range(blocks):
    lo, hi = prompt_len + blk * block_length, prompt_len + (blk + 1) * block_length
    m = (x[:, lo:hi] == mask_id).sum(axis=1)
    schedule = m[:, None] // per_block + (np.arange(per_block)[None, :] < m[:, None] % per_block)
    for j in range(per_block):
      logits = numpy_forward(w, cfg, x, full_mask)
      if cfg_scale:
        uncond = numpy_forward(w, cfg, np.where(given, mask_id, x), full_mask)
        logits = uncond + (cfg_scale + 1) * (logits - uncond)
      logits[..., mask_id] = -np.inf
      logits[..., vocab_size:] = -np.inf
      x0 = logits.argmax(-1)
      probs = np.exp(logits - logits.max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
      conf = np.take_along_axis(probs, x0[..., None], -1)[..., 0]
      conf[:, hi:] = -np.inf  # every mask before the block's end competes, as in LLaDA
      conf[x != mask_id] = -np.inf
      for row in range(b):
        chosen = np.argsort(-conf[row], kind='stable')[:schedule[row, j]]
        x[row, chosen] = x0[row, chosen]
  return x


def test_conversion_writes_the_weights_in_our_layout(hf_dir, converted):
  model = generate.load(checkpoint=converted)
  w, cfg = hf_weights(hf_dir)
  p = 'model.transformer.'
  np.testing.assert_array_equal(model.params['wte'], w[f'{p}wte.weight'])
  np.testing.assert_array_equal(model.params['lm_head'], w[f'{p}ff_out.weight'].T)
  q1 = w[f'{p}blocks.1.q_proj.weight'].T.reshape(cfg['d_model'], cfg['n_heads'], -1)
  np.testing.assert_array_equal(model.params['blocks']['q_proj'][1], q1)
  np.testing.assert_array_equal(model.params['blocks']['ff_out'][0],
                                w[f'{p}blocks.0.ff_out.weight'].T)
  assert model.config.rope_theta == cfg['rope_theta'] and model.config.vocab_size == 352
  assert model.tokenizer.mask_id == cfg['mask_token_id']
  assert sorted(os.listdir(os.path.join(converted, 'tokenizer'))) == list(
      sorted(llada.TOKENIZER_FILES))


@pytest.mark.parametrize('which', ['hf_dir', 'gqa_dir'])
def test_logits_match_an_independent_numpy_forward(which, request, tmp_path):
  path = request.getfixturevalue(which)
  llada.convert(path, str(tmp_path), 'float32')
  model = generate.load(checkpoint=str(tmp_path))
  w, cfg = hf_weights(path)
  tokens = np.random.default_rng(0).integers(0, 300, (2, 11))
  mask = np.ones((2, 11), bool)
  mask[1, :3] = False  # a left-padded row
  ours = model.logits_fn(model.params, jnp.asarray(tokens), jnp.asarray(mask))
  expected = numpy_forward(w, cfg, tokens, mask)
  assert np.max(np.abs(np.asarray(ours)[mask] - expected[mask])) < 1e-4
  # The block cache's full pass (keys and values kept) is the same forward.
  cached, _ = model.decode_fn(model.params, jnp.asarray(tokens), None, 0, jnp.asarray(mask))
  assert np.max(np.abs(np.asarray(cached)[mask] - expected[mask])) < 1e-4


def test_a_one_layer_model_converts_and_loads(one_layer_dir, tmp_path):
  llada.convert(one_layer_dir, str(tmp_path), 'float32')
  model = generate.load(checkpoint=str(tmp_path))
  params, config, _ = llada.load_params(one_layer_dir, 'float32')
  assert config.n_layers == 1 and params['blocks']['q_proj'].shape[0] == 1
  jax.tree.map(np.testing.assert_array_equal, params, model.params)
  w, cfg = hf_weights(one_layer_dir)
  tokens = np.random.default_rng(0).integers(0, 300, (2, 11))
  ours = model.logits_fn(model.params, jnp.asarray(tokens))
  assert np.max(np.abs(np.asarray(ours) - numpy_forward(w, cfg, tokens))) < 1e-4


def test_loading_straight_from_the_hf_directory_equals_converting(hf_dir, converted):
  direct = generate.load(hf_dir=hf_dir, dtype='float32')
  jax.tree.map(np.testing.assert_array_equal, direct.params,
               generate.load(checkpoint=converted).params)


def test_dtype_chooses_how_a_checkpoint_or_hf_directory_loads(hf_dir, converted, tmp_path):
  direct = generate.load(hf_dir=hf_dir)  # bfloat16 unless told otherwise
  assert direct.config.param_dtype == 'bfloat16' and direct.params['wte'].dtype == jnp.bfloat16
  # The float32 checkpoint, read in bfloat16, is the HF directory read so.
  model, _ = chat.load_for_chat(converted, None, dtype='bfloat16')
  assert model.config.dtype == 'bfloat16'
  jax.tree.map(np.testing.assert_array_equal, model.params, direct.params)
  # A bfloat16 checkpoint keeps its dtype by default and widens to float32 when asked.
  llada.convert(hf_dir, str(tmp_path))
  assert generate.load(checkpoint=str(tmp_path)).params['wte'].dtype == jnp.bfloat16
  wide = generate.load(checkpoint=str(tmp_path), dtype='float32')
  assert wide.config.param_dtype == 'float32' and wide.params['wte'].dtype == jnp.float32
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b.astype(np.float32)),
               wide.params, direct.params)
  with pytest.raises(generate.ConfigError, match="dtype: must be one of .*got 'float16'"):
    generate.load(checkpoint=converted, dtype='float16')


@pytest.mark.parametrize('cfg_scale, padded, prompt_masks', [
    (0.0, False, False), (1.5, False, False), (0.0, True, False), (0.0, True, True)])
def test_sampler_matches_a_numpy_reference_of_llada_generate(hf_dir, converted, cfg_scale,
                                                             padded, prompt_masks):
  """Token for token, on a batch padded as LLaDA's generate() takes it; with masks in the
  prompt, filled as LLaDA fills them (fill_prompt_masks), on the whole canvas."""
  model = generate.load(checkpoint=converted)
  w, cfg = hf_weights(hf_dir)
  tok = model.tokenizer
  prompts = [tok.encode('def fibonacci(n):'), tok.encode('Hello there, how are')]
  if not padded:
    prompts = [prompts[0], prompts[0]]
  if prompt_masks:
    prompts = [np.where(np.arange(len(p)) % 5 == 2, tok.mask_id, p) for p in prompts]
  width = max(len(p) for p in prompts)
  canvas = np.full((2, width), tok.pad_id)
  attention = np.zeros((2, width), bool)
  for row, ids in enumerate(prompts):
    canvas[row, width - len(ids):] = ids
    attention[row, width - len(ids):] = True
  settings = dict(gen_length=8, steps=8, block_length=4)
  ours = generate.generate_ids(model, canvas, attention_mask=attention, cfg_scale=cfg_scale,
                               fill_prompt_masks=prompt_masks, **settings)
  expected = numpy_generate(w, cfg, canvas, attention if padded else None, cfg_scale=cfg_scale,
                            vocab_size=tok.vocab_size, **settings)
  if prompt_masks:
    assert not np.all(expected[:, :width] == canvas)  # the reference filled some
  for row, completion in enumerate(ours):
    np.testing.assert_array_equal(completion.tokens, expected[row, width:])
    np.testing.assert_array_equal(completion.canvas[:width][attention[row]],
                                  expected[row, :width][attention[row]])


def test_a_prompt_holding_the_mask_token_needs_fill_prompt_masks(converted):
  model = generate.load(checkpoint=converted)
  prompt = np.append(model.tokenizer.encode('Hello'), model.tokenizer.mask_id)
  with pytest.raises(sampling.SamplingError, match='holds the mask token .* 1 times; pass '
                     'fill_prompt_masks=True'):
    generate.generate_ids(model, [prompt], gen_length=4, steps=4, block_length=4)
  with pytest.raises(sampling.SamplingError, match='attention_mask: row 0 has padding after'):
    generate.generate_ids(model, np.ones((1, 4), np.int32), attention_mask=[[1, 1, 0, 1]],
                          gen_length=4, steps=4, block_length=4)


def test_a_five_turn_chat_compiles_once_per_prompt_bucket(converted):
  """Prompt lengths are padded to buckets and the settings are traced: a turn whose prompt
  falls in a bucket an earlier turn used compiles nothing, whatever its settings."""
  model, template = chat.load_for_chat(converted, None)
  messages, seen, buckets = [], set(), []
  with count_compilations() as total:
    for turn, text in enumerate(['Hi', 'Tell me more', 'Why?', 'And then', 'Thanks, bye']):
      messages.append({'role': 'user', 'content': text})
      prompt = template.encode(model.tokenizer, messages, add_generation_prompt=True)
      bucket = sampling.bucket(len(prompt))
      with count_compilations() as compiled:
        answer = chat.reply(model, template, messages, gen_length=8, steps=8, block_length=4,
                            temperature=0.25 * turn, seed=turn)
      assert bucket not in seen or not compiled, (turn, bucket, len(compiled))
      seen.add(bucket)
      buckets.append(bucket)
      messages.append({'role': 'assistant', 'content': answer})
  assert len(seen) < len(buckets), buckets  # some turns share a bucket: the test bites
  assert total


def test_chat_template_renders_llada_ids(hf_dir):
  tok = generate.load(hf_dir=hf_dir, dtype='float32').tokenizer
  template = ChatTemplate(os.path.join(hf_dir, 'tokenizer_config.json'))
  messages = [{'role': 'user', 'content': ' Hello there '},
              {'role': 'assistant', 'content': 'Hi'}, {'role': 'user', 'content': 'How are you?'}]
  ids = template.encode(tok, messages).tolist()
  sid = tok.token_id
  turn = lambda role, text: ([sid('<|start_header_id|>')] + tok.encode(role).tolist()
                             + [sid('<|end_header_id|>')] + tok.encode('\n\n' + text).tolist()
                             + [sid('<|eot_id|>')])
  expected = ([tok.bos_id] + turn('user', 'Hello there') + turn('assistant', 'Hi')
              + turn('user', 'How are you?') + [sid('<|start_header_id|>')]
              + tok.encode('assistant').tolist() + [sid('<|end_header_id|>')]
              + tok.encode('\n\n').tolist())
  assert ids == expected
  assert ids.count(tok.bos_id) == 1
  assert sid('<|eot_id|>') in tok.stop_ids


def test_chat_keeps_answers_cut_at_end_of_turn(converted):
  model, template = chat.load_for_chat(converted, None)
  eot = model.tokenizer.token_id('<|eot_id|>')

  hi = model.tokenizer.encode('Hi')

  def answers_hi(params, tokens, mask=None):
    """'Hi' in the first generated positions, then end-of-turn (the canvas ends in 8)."""
    generated = jnp.arange(tokens.shape[1]) - (tokens.shape[1] - 8)
    wanted = jnp.where(generated < len(hi), jnp.asarray(hi)[jnp.clip(generated, 0, len(hi) - 1)],
                       eot)
    return 9.0 * jax.nn.one_hot(jnp.broadcast_to(wanted, tokens.shape), model.config.vocab_size)

  fake = generate.Model(model.params, model.config, model.tokenizer, 0,
                        model.diffusion_schedule, logits_fn=answers_hi,
                        tokenizer_path=model.tokenizer_path)
  assert chat.reply(fake, template, [{'role': 'user', 'content': 'Hello'}], gen_length=8,
                    steps=8, block_length=8) == 'Hi'


@pytest.mark.parametrize('damage, message', [
    ('missing', r'missing: model.transformer.blocks.1.up_proj.weight'),
    ('shape', r'wrong shape: model.transformer.blocks.0.k_proj.weight \(32, 64\)'),
    ('extra', r'unexpected: model.transformer.blocks.0.bias'),
    ('mask', r'the wrong mask token'),
])
def test_bad_checkpoints_are_clear_errors_and_leave_nothing(hf_dir, tmp_path, damage, message):
  broken = str(tmp_path / 'hf')
  shutil.copytree(hf_dir, broken)
  files = sorted(f for f in os.listdir(broken) if f.endswith('.safetensors'))
  index_path = os.path.join(broken, 'model.safetensors.index.json')
  with open(index_path, encoding='utf-8') as f:
    index = json.load(f)
  if damage == 'mask':
    with open(os.path.join(broken, 'config.json'), encoding='utf-8') as f:
      config = json.load(f)
    config['mask_token_id'] = 1
    with open(os.path.join(broken, 'config.json'), 'w', encoding='utf-8') as f:
      json.dump(config, f)
  else:
    for name in files:
      tensors = load_file(os.path.join(broken, name))
      if damage == 'missing':
        tensors.pop('model.transformer.blocks.1.up_proj.weight', None)
        index['weight_map'].pop('model.transformer.blocks.1.up_proj.weight', None)
      elif damage == 'shape' and 'model.transformer.blocks.0.k_proj.weight' in tensors:
        tensors['model.transformer.blocks.0.k_proj.weight'] = np.zeros((32, 64), np.float32)
      elif damage == 'extra' and name == files[0]:
        tensors['model.transformer.blocks.0.bias'] = np.zeros(3, np.float32)
        index['weight_map']['model.transformer.blocks.0.bias'] = name
      save_file(tensors, os.path.join(broken, name))
    with open(index_path, 'w', encoding='utf-8') as f:
      json.dump(index, f)
  out = tmp_path / 'out'
  with pytest.raises(llada.ConversionError, match=message):
    llada.convert(broken, str(out), 'float32')
  assert not os.path.exists(out / 'checkpoints' / '0')
  if out.exists():
    assert not any(p.startswith('.converting') for p in os.listdir(out))


def test_convert_cli_reports_errors_in_one_line(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  proc = subprocess.run([sys.executable, '-m', 'dllm_jax.convert.llada', f'--hf_dir={tmp_path}',
                         f'--out={tmp_path / "out"}'], capture_output=True, text=True,
                        timeout=120, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == f'error: no config.json in {tmp_path}.'


def test_sft_loss_never_masks_or_scores_the_prompt():
  seen = []

  def logits_fn(params, tokens, mask=None):
    seen.append(tokens)
    return params * jnp.ones(tokens.shape + (16,))

  loss_fn = diffusion.make_sft_loss_fn(logits_fn, diffusion.Schedule('linear'), 15, 15)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 14, (8, 12)))
  prompt = jnp.arange(12)[None, :] < jnp.array([3, 5, 7, 2, 4, 6, 8, 9])[:, None]
  batch = {'tokens': tokens, 'valid': jnp.ones((8, 12), bool), 'prompt': prompt}
  loss, aux = loss_fn(jnp.float32(0.0), batch, jax.random.key(0))
  assert not np.any(np.asarray(seen[0] == 15)[np.asarray(prompt)])
  assert np.any(np.asarray(seen[0] == 15)[~np.asarray(prompt)])
  assert int(aux['normalizer']) == 8 and int(aux['targets']) == int((~prompt).sum())
  assert float(loss) > 0
  # Prompt tokens are never scored: with uniform logits, changing them changes nothing.
  changed = {**batch, 'tokens': jnp.where(prompt, 3, tokens)}
  np.testing.assert_allclose(loss_fn(jnp.float32(0.0), changed, jax.random.key(0))[0], loss)


def test_sft_fine_tunes_a_converted_model(converted, tmp_path):
  conversations = [{'messages': [{'role': 'user', 'content': f'What is {i} + {i}?'},
                                 {'role': 'assistant', 'content': f'{2 * i}'}]}
                   for i in range(40)]
  data = tmp_path / 'sft.jsonl'
  data.write_text('\n'.join(json.dumps(c) for c in conversations) + '\n')
  config = load_config(os.path.join(CONFIG_DIR, 'llada_8b.py'), 'instruct')
  model = generate.load(checkpoint=converted)
  config.model.update({k: getattr(model.config, k) for k in (
      'vocab_size', 'd_model', 'n_layers', 'n_heads', 'n_kv_heads', 'mlp_dim', 'rope_theta',
      'norm_eps', 'max_seq_len')})
  config.model.update(param_dtype='float32', dtype='float32', remat_policy='none')
  config.data.update(files=str(data), tokenizer=model.tokenizer_path, seq_len=32,
                     validation_fraction=0.1)
  config.train.update(init_from=converted, batch_size=8, microbatches=2, num_steps=4,
                      warmup_steps=1, eval_every=4, checkpoint_every=4, log_every=1,
                      progress_bar=False, learning_rate=1e-3)
  config.mesh.update(data=-1, fsdp=2, tensor=2)
  config.sampling.update(num_samples=1, steps=8, gen_length=8, block_length=8)
  summary = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert sorted(summary['losses']) == [1, 2, 3, 4]
  assert all(np.isfinite(v) for v in summary['losses'].values())
  tuned = generate.load(workdir=str(tmp_path / 'run'))
  assert tuned.step == 4
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), tuned.params, model.params)
  assert all(jax.tree.leaves(changed))  # every tensor started from the converted ones and moved


def test_init_from_another_model_is_refused(converted, tmp_path, corpus_dir, tfds_dir):
  config = load_config(os.path.join(CONFIG_DIR, 'llada_small.py'), 'tiny')
  config.data.update(files=corpus_dir, data_dir=tfds_dir)
  config.train.update(init_from=converted, progress_bar=False)
  with pytest.raises(train.ckpt_lib.CheckpointError, match='holds another model'):
    train.train_and_evaluate(config, str(tmp_path))


def test_mc_likelihood_runs_on_a_converted_model(converted):
  model = generate.load(checkpoint=converted)
  tok = model.tokenizer
  best, nlls = sampling.multiple_choice(
      model.logits_fn, model.params, jnp.asarray(tok.encode('What is 1 + 1?')),
      [jnp.asarray(tok.encode(a)) for a in ('2', 'fibonacci')], jax.random.key(0),
      mask_id=tok.mask_id, vocab_size=tok.vocab_size, mc_num=32, batch_size=16)
  assert best in (0, 1) and all(np.isfinite(nlls))


@pytest.mark.parametrize('source', ['checkpoint', 'hf_dir'])
def test_loading_shards_onto_a_mesh_and_samples_the_same(hf_dir, converted, source):
  where = {'checkpoint': converted} if source == 'checkpoint' else {'hf_dir': hf_dir,
                                                                     'dtype': 'float32'}
  single = generate.load(**where)
  sharded = generate.load(mesh_shape=(1, 4, 2), **where)
  assert len(sharded.params['blocks']['ff_proj'].sharding.device_set) == 8
  assert tuple(sharded.params['blocks']['ff_proj'].sharding.spec) == (None, 'fsdp', 'tensor')
  prompts = ['def fibonacci(n):', 'Hello']
  settings = dict(gen_length=8, steps=8, block_length=4)
  for a, b in zip(generate.generate(single, prompts, **settings),
                  generate.generate(sharded, prompts, **settings)):
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_a_single_unindexed_safetensors_file_converts(hf_dir, tmp_path):
  single = tmp_path / 'hf'
  shutil.copytree(hf_dir, single, ignore=shutil.ignore_patterns('*.safetensors', '*.json'))
  for name in ('config.json', 'tokenizer.json', 'tokenizer_config.json'):
    shutil.copy(os.path.join(hf_dir, name), single)
  weights = {k: v.astype(np.float32) for k, v in hf_weights(hf_dir)[0].items()}
  save_file(weights, str(single / 'model.safetensors'))
  llada.convert(str(single), str(tmp_path / 'out'), 'float32')
  jax.tree.map(np.testing.assert_array_equal,
               generate.load(checkpoint=str(tmp_path / 'out')).params,
               generate.load(hf_dir=hf_dir, dtype='float32').params)
