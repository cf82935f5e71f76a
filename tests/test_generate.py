"""dllm_jax.generate (Python and CLI) and --config.mode=eval on a freshly trained checkpoint."""

import dataclasses
import json
import os
import subprocess
import sys
import urllib.request

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import CONFIG_DIR, REPO, count_compilations, load_config
from dllm_jax import checkpoint as ckpt_lib
from dllm_jax import generate
from dllm_jax import sampling
from dllm_jax import train


@pytest.fixture(scope='module')
def trained(corpus_dir, tfds_dir, tmp_path_factory):
  """The tiny config trained for 30 steps; its workdir and summary."""
  config = load_config(os.path.join(CONFIG_DIR, 'llada_small.py'), 'tiny')
  config.data.update(files=corpus_dir, data_dir=tfds_dir)
  config.train.update(num_steps=30, checkpoint_every=30, eval_every=30, progress_bar=False)
  workdir = str(tmp_path_factory.mktemp('trained'))
  return workdir, train.train_and_evaluate(config, workdir), config


def run_cli(module, *args):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=180, env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_training_ends_by_printing_samples_from_validation_prompts(trained):
  _, summary, config = trained
  assert len(summary['samples']) == config.sampling.num_samples
  assert all(len(s) > 0 for s in summary['samples'])


def test_generate_from_python(trained):
  workdir = trained[0]
  model = generate.load(workdir=workdir)
  assert model.step == 30
  out = generate.generate(model, ['def f(x):', 'return'], gen_length=16, steps=8,
                          block_length=8, temperature=0.8, seed=1)
  assert len(out) == 2
  for completion in out:
    assert completion.tokens.shape == (16,) and not np.any(completion.tokens == 259)
    assert sorted(set(completion.commit_step.tolist())) == list(range(8))


def test_ten_calls_within_a_prompt_bucket_compile_once(trained):
  """Prompts of 17 to 26 bytes share the 32-token bucket; settings are traced values."""
  model = generate.load(workdir=trained[0])
  variants = [dict(sampler=s, temperature=t, top_k=k, top_p=p, steps=st)
              for s, t, k, p, st in [('low_confidence', 0.0, 0, 1.0, 16),
                                     ('margin', 0.7, 5, 1.0, 8), ('entropy', 1.0, 0, 0.9, 4),
                                     ('random', 0.3, 3, 0.8, 16), ('ancestral', 1.0, 0, 1.0, 7),
                                     ('low_confidence', 0.9, 10, 0.95, 2)]]
  with count_compilations() as compiled:
    for i, n in enumerate(range(17, 27)):
      generate.generate(model, ['x' * n], gen_length=16, block_length=8, seed=i,
                        **variants[i % len(variants)])
      if i == 0:
        first = len(compiled)
  assert first and len(compiled) == first, (first, len(compiled))


@pytest.mark.parametrize('block_cache', [False, True])
def test_left_padding_does_not_change_a_completion(trained, block_cache):
  """Rotary attention is relative and pads are masked out, so padding a prompt is a no-op."""
  model = generate.load(workdir=trained[0])
  settings = dict(gen_length=8, steps=8, block_length=4, block_cache=block_cache)
  alone = generate.generate(model, ['x = 1'], **settings)
  padded = generate.generate(model, ['x = 1', 'a much longer prompt'], **settings)
  np.testing.assert_array_equal(alone[0].tokens, padded[0].tokens)


def test_output_is_cut_at_eos_unless_eos_is_forbidden(trained):
  model = generate.load(workdir=trained[0])
  eos = model.tokenizer.eos_id

  def loves_eos(params, tokens, mask=None):
    logits = jnp.zeros(tokens.shape + (model.config.vocab_size,))
    return logits.at[:, :, eos].set(5.0).at[:, :, ord('a')].set(4.0)

  fake = generate.Model(model.params, model.config, model.tokenizer, model.step,
                        model.diffusion_schedule, logits_fn=loves_eos)
  plain = generate.generate(fake, ['hi'], gen_length=8, steps=8, block_length=8)[0]
  assert plain.text == '' and np.all(plain.tokens == eos)
  forbidden = generate.generate(fake, ['hi'], gen_length=8, steps=8, block_length=8,
                                forbid_eos=True)[0]
  assert forbidden.text == 'a' * 8


def test_denoising_frames_reveal_one_step_at_a_time(trained):
  model = generate.load(workdir=trained[0])
  completion = generate.generate(model, ['def'], gen_length=8, steps=4, block_length=8)[0]
  frames = generate.denoising_frames(model.tokenizer, completion, 4)
  assert [f.count(generate.MASK_GLYPH) for f in frames] == [6, 4, 2, 0]


def test_prompt_longer_than_the_context_is_a_clear_error(trained):
  model = generate.load(workdir=trained[0])
  with pytest.raises(sampling.SamplingError, match='exceed the model.s context'):
    generate.generate(model, ['x' * model.config.max_seq_len], gen_length=8, steps=8,
                      block_length=8)


def test_cli_prints_completions_and_steps(trained, tmp_path):
  cache = tmp_path / 'compilation_cache'
  args = [f'--workdir={trained[0]}', '--prompt=def f(x):', '--gen_length=8', '--steps=4',
          '--block_length=4', '--num_samples=2', '--show_steps', f'--compilation_cache={cache}']
  proc = run_cli('dllm_jax.generate', *args)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.count('=== sample') == 2 and proc.stdout.count('--- step') == 4
  assert proc.stdout.count('4 model calls for 8 tokens') == 2
  # Started again, it finds every program it needs in the persistent cache: none is added.
  programs = set(os.listdir(cache))
  assert any(name.startswith('jit_sample_rows') for name in programs), programs
  again = run_cli('dllm_jax.generate', *args)
  assert again.returncode == 0 and again.stdout == proc.stdout, again.stderr[-2000:]
  assert set(os.listdir(cache)) == programs
  # The adaptive threshold 0 commits a whole 4-token block per model call: 2 calls, 2 frames.
  cached = run_cli('dllm_jax.generate', f'--workdir={trained[0]}', '--prompt=def f(x):',
                   '--gen_length=8', '--steps=8', '--block_length=4', '--block_cache',
                   '--sampler=threshold', '--threshold=0', '--show_steps')
  assert cached.returncode == 0 and cached.stdout.count('=== sample') == 1, cached.stderr[-2000:]
  assert cached.stdout.count('--- step') == 2 and '2 model calls for 8 tokens' in cached.stdout


@pytest.mark.parametrize('args, message', [
    (['--gen_length=10', '--block_length=4'], 'block_length: 4 must divide gen_length=10'),
    (['--steps=0'], 'steps: must be >= 1'),
    (['--gen_length=8', '--block_length=4', '--steps=3'], 'steps: 3 must be a multiple'),
    (['--block_cache', '--sampler=ancestral'], 'block_cache: needs a remasking sampler'),
    (['--sampler=threshold', '--threshold=2'], 'threshold: must be in [0, 1]'),
])
def test_cli_bad_settings_are_one_line_errors(trained, args, message):
  proc = run_cli('dllm_jax.generate', f'--workdir={trained[0]}', '--prompt=x', *args)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith(f'error: {message}'), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr


def test_infill_canvas_reads_mask_markers():
  tok = generate.make_tokenizer('bytes')
  np.testing.assert_array_equal(generate.infill_canvas(tok, 'ab[MASK]c[MASK:3]'),
                                [97, 98, 259, 99, 259, 259, 259])
  with pytest.raises(sampling.SamplingError, match='no .MASK. or .MASK:N. marker'):
    generate.infill_canvas(tok, 'no masks [MASK:x]')
  with pytest.raises(sampling.SamplingError, match='asks for no masks'):
    generate.infill_canvas(tok, 'x[MASK:0]')


def test_infill_keeps_the_given_text_and_fills_every_mask(trained):
  model = generate.load(workdir=trained[0])
  text = 'def f(x):\n    [MASK:12]\n    return y'
  canvas = generate.infill_canvas(model.tokenizer, text)
  given = canvas != model.tokenizer.mask_id
  out = generate.infill(model, text, num_samples=2, temperature=0.8, seed=1)
  assert len(out) == 2
  for filled in out:
    np.testing.assert_array_equal(filled.tokens[given], canvas[given])
    assert not np.any(filled.tokens == model.tokenizer.mask_id)
    assert np.all(filled.commit_step[given] == -1)
    # One block of 12 masks in 12 steps (the default, one per mask): one commit per step.
    assert sorted(filled.commit_step[~given].tolist()) == list(range(12))
    assert filled.text.startswith('def f(x):\n    ') and filled.text.endswith('\n    return y')
  assert not np.array_equal(out[0].tokens, out[1].tokens)  # two samples, not one twice


def test_infill_bad_inputs_are_clear_errors(trained):
  model = generate.load(workdir=trained[0])
  with pytest.raises(sampling.SamplingError, match='canvas .* exceeds the model.s context'):
    generate.infill(model, 'x' * model.config.max_seq_len + '[MASK]')
  with pytest.raises(sampling.SamplingError, match='num_samples: must be >= 1'):
    generate.infill(model, '[MASK]', num_samples=0)
  causal = dataclasses.replace(model, config=dataclasses.replace(model.config, causal=True))
  with pytest.raises(sampling.SamplingError,
                     match=r'needs a full-sequence diffusion model; .* \(autoregressive\)'):
    generate.infill(causal, 'a[MASK]b')


def test_cli_infills_and_shows_each_step(trained):
  proc = run_cli('dllm_jax.generate', f'--workdir={trained[0]}', '--infill=ab[MASK:6]cd',
                 '--show_steps')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.count('=== sample') == 1 and proc.stdout.count('--- step') == 6
  frames = [block.split('\n', 1)[1] for block in proc.stdout.split('--- step ')[1:]]
  for step, frame in enumerate(frames, 1):  # the whole canvas, masks left after each step
    assert frame.startswith('ab') and frame.count(generate.MASK_GLYPH) == 6 - step, frame
  for args, message in [(['--infill=ab[MASK]', '--prompt=x'], 'give --prompt'),
                        (['--infill=no marker'], 'infill: the text has no'),
                        (['--infill=ab[MASK]', '--block_cache'], 'block_cache: --infill')]:
    proc = run_cli('dllm_jax.generate', f'--workdir={trained[0]}', *args)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f'error: {message}'), proc.stderr


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(ckpt_lib.CheckpointError, match='no checkpoint directory'):
    generate.load(workdir=str(tmp_path))


def test_eval_mode_reports_the_bounds_with_standard_errors(trained):
  workdir, _, config = trained
  config.mode = 'eval'
  config.eval.update(t_samples=3, discrete_steps=8)
  report = train.evaluate_checkpoint(config, workdir)
  with open(os.path.join(workdir, 'eval_30.json'), encoding='utf-8') as f:
    assert json.load(f) == json.loads(json.dumps(report))
  for name in ('continuous', 'discrete_T8'):
    assert 0 < report[name]['stderr_bits'] < report[name]['bits_per_token'] < 8.1
  assert report['tokens'] > 0 and report['t_samples'] == 3


def test_a_block_diffusion_checkpoint_generates_and_serves(tiny_config, tmp_path):
  """diffusion.block_size 4: generate decodes its blocks on the exact cache, to an EOS or the
  maximum; the server answers as generate does; a foreign block length and infilling are
  clear errors."""
  from dllm_jax.server import api, engine as engine_lib  # pylint: disable=g-import-not-at-top
  tiny_config.diffusion.block_size = 4
  tiny_config.train.update(num_steps=4, eval_every=4, checkpoint_every=4)
  train.train_and_evaluate(tiny_config, str(tmp_path))
  model = generate.load(workdir=str(tmp_path))
  assert model.block_size == 4
  settings = dict(gen_length=16, steps=8, sampler='threshold', threshold=0.2, stop_at_eos=True)
  out = generate.generate(model, ['def f(x):', 'return'], **settings)
  assert all(len(c.tokens) == 16 and 1 <= c.nfe <= 8 for c in out)
  with pytest.raises(sampling.SamplingError, match='decodes blocks of 4, got 8'):
    generate.generate(model, ['def'], block_length=8, **settings)
  with pytest.raises(sampling.SamplingError, match='block diffusion, blocks of 4'):
    generate.infill(model, 'def [MASK:4](x):')

  engine = engine_lib.Engine(model, max_batch=2, prompt_buckets=(16,), gen_buckets=(16,))
  engine.warm_up(lambda message: None)
  try:
    with api.running(api.create_app(engine, model_name='bd')) as base:
      request = urllib.request.Request(f'{base}/v1/completions', method='POST', data=json.dumps(
          {'model': 'bd', 'prompt': 'def f(x):', 'max_tokens': 16, 'steps': 8,
           'sampler': 'threshold', 'threshold': 0.2, 'temperature': 0}).encode(),
          headers={'Content-Type': 'application/json'})
      with urllib.request.urlopen(request, timeout=120) as response:
        body = json.loads(response.read())
      assert body['choices'][0]['text'] == out[0].text
      assert body['usage']['nfe'] == out[0].nfe
  finally:
    engine.stop()
  with pytest.raises(ValueError, match='must divide every bucket'):
    engine_lib.Engine(model, prompt_buckets=(18,), gen_buckets=(16,))
