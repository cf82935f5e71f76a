"""python -m dllm_jax.benchmark: every task at a tiny size, and the reversal data's guarantees;
the sampling and training speed benchmarks."""

import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from dllm_jax import benchmark
from dllm_jax import train
from dllm_jax.benchmarks import reversal, sample_speed


def flags_for(**overrides):
  defaults = dict(dllm_checkpoint='', ar_checkpoint='', train_steps=4, lengths=['8', '16'],
                  batch_sizes=['1', '2'], dllm_steps=8, repeats=1, dictionary_size=8,
                  pair_repeats=3, pairs=6, text_file='', seed=0, data_files='', data_dir='',
                  steps_equal_length_up_to=1024, runs='')
  return types.SimpleNamespace(**{**defaults, **overrides})


def test_dictionary_is_a_bijection_written_one_way_only():
  pairs = reversal.make_dictionary(200, seed=3)
  sources, targets = zip(*pairs)
  assert len(set(sources)) == len(set(targets)) == 200
  assert not set(sources) & set(targets)
  text = reversal.training_text(pairs, repeats=4, seed=3)
  lines = text.splitlines()
  assert set(lines) == {f'{s} = {t}' for s, t in pairs}  # every pair, forward only
  assert len(lines) == 5 * 200
  for prompt in reversal.reverse_prompts(pairs):
    assert prompt not in text  # no reverse query ever appears in training
  assert all(line.split(' = ')[0] in set(sources) for line in lines)


def test_completion_pairs_are_consecutive_lines():
  text = ''.join(f'line number {i:03d} here\n' for i in range(50))
  triples = reversal.line_pairs(text, 10, seed=1)
  assert len(triples) == 10
  for context, first, second in triples:
    assert f'{context}{first}\n{second}\n' in text  # the lines just before, then n, n+1
    assert int(second[12:15]) == int(first[12:15]) + 1


@pytest.mark.parametrize('task', benchmark.TASKS)
def test_every_task_runs_tiny_and_writes_its_outputs(task, tmp_path, corpus_dir, tfds_dir):
  text_file = sorted(os.listdir(corpus_dir))[0]
  f = flags_for(data_files=corpus_dir, data_dir=tfds_dir,
                text_file=os.path.join(corpus_dir, text_file))
  out = str(tmp_path / 'out')
  benchmark.run(task, ['dllm', 'ar'], out, 'tiny', f)
  for suffix in ('json', 'md', 'png'):
    assert os.path.getsize(os.path.join(out, f'{task}.{suffix}')) > 0
  with open(os.path.join(out, f'{task}.json'), encoding='utf-8') as fh:
    result = json.load(fh)
  assert result['task'] == task and result['rows']
  assert {row['model'] for row in result['rows']} == {'dllm', 'ar'}
  if task != 'speed':  # the models it trained are kept apart from the report
    assert {'ar', 'dllm'} <= set(os.listdir(os.path.join(out, 'runs', task)))
  if task == 'speed':
    assert {r['gen_length'] for r in result['rows']} == {8, 16}
    assert all(r['tokens_per_sec'] > 0 and r['gflops_per_token'] > 0 for r in result['rows'])
  elif task == 'likelihood':
    assert all(0 < r['val_bits_per_token'] < 9 for r in result['rows'])
  else:
    assert all(0 <= r['exact_match'] <= 1 and 0 <= r['char_similarity'] <= 1
               for r in result['rows'])


def test_unknown_model_is_a_clear_error(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'dllm_jax.benchmark', '--task=speed',
                         '--models=dllm,gpt', f'--out={tmp_path}'], cwd=REPO,
                        capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith('error: --models: dllm, gpt')


def test_sample_speed_loop_and_sampler_agree_over_blocks_and_rows(tiny_config):
  # benchmark() raises if the per-step loop and the jitted sampler differ in any token.
  row = sample_speed.benchmark(tiny_config, batch_size=3, gen_length=16, steps=8,
                               block_length=4, prompt_len=5, repeats=1, peak_flops=1e12)
  assert row['canvas_length'] == 21 and row['token_agreement'] == 1.0
  assert row['speedup_bound'] == pytest.approx(row['loop_s'] / row['forwards_s'])
  assert row['roofline_step_s'] == pytest.approx(2 * row['params_millions'] * 1e6 * 3 * 21
                                                 / 1e12)


def test_sample_speed_on_a_trained_run_with_an_exact_one_layer_cache(tiny_config, tmp_path):
  """With --workdir the run's checkpoint and validation text are used; a one-layer model's
  block cache is exact, so the cached sampler must agree with the plain one everywhere."""
  tiny_config.model.n_layers = 1
  tiny_config.train.update(num_steps=2, checkpoint_every=2, eval_every=2, progress_bar=False)
  tiny_config.sampling.num_samples = 0
  train.train_and_evaluate(tiny_config, str(tmp_path))
  row = sample_speed.benchmark(tiny_config, batch_size=2, gen_length=16, steps=8,
                               block_length=4, prompt_len=5, repeats=1, peak_flops=1e12,
                               workdir=str(tmp_path))
  assert row['cached_agreement'] == 1.0 and row['cached_speedup'] > 0


def test_forward_passes_makes_every_pass_and_nothing_else():
  calls = []

  def forward(params, x):
    calls.append(1)
    return jax.nn.one_hot(x + params, 7)

  canvas = jnp.array([[0, 4, 4], [2, 4, 4]])
  out = sample_speed.forward_passes(forward, 1, canvas, 3)
  assert len(calls) == 1  # traced once, run in a compiled loop
  np.testing.assert_array_equal(out, [[3, 4, 4], [5, 4, 4]])  # three passes, chained


def test_interleaved_medians_runs_every_method_once_per_round():
  order = []
  methods = {name: (lambda name=name: order.append(name) or jnp.zeros(())) for name in 'ab'}
  seconds, outputs = sample_speed.interleaved_medians(methods, repeats=3)
  assert order == ['a', 'b'] * 4  # a warm-up round, then three timed ones
  assert set(seconds) == {'a', 'b'} and all(t >= 0 for t in seconds.values())
  assert set(outputs) == {'a', 'b'}


def test_train_speed_reports_mfu_against_a_measured_cpu_peak():
  proc = subprocess.run([sys.executable, '-m', 'dllm_jax.benchmarks.train_speed',
                         '--config=configs/llada_small.py:tiny', '--steps=2', '--warmup=1'],
                        cwd=REPO, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['peak_source'] == 'measured f32 matmul'
  assert 0 < out['mfu'] < 1 and out['tokens_per_sec'] > 0
  assert out['params_millions'] == pytest.approx(0.108, abs=0.01)
