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
from dllm_jax.benchmarks import accelerator, reversal, sample_speed


def flags_for(**overrides):
  defaults = dict(dllm_checkpoint='', ar_checkpoint='', train_steps=4, lengths=['8', '16'],
                  batch_sizes=['1', '2'], dllm_steps=8, repeats=1, dictionary_size=8,
                  pair_repeats=3, pairs=6, text_file='', seed=0, data_files='', data_dir='',
                  steps_equal_length_up_to=1024, runs='', prompts=4, prompt_len=8,
                  gen_length=16, block_length=8)
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
  if task == 'frontier':
    at = {(r['model'], r['setting'], r['batch']): r for r in result['rows']}
    for batch in (1, 2):
      exact = at[('dllm', '16 steps', batch)]
      assert exact['nfe_per_token'] == 1 and exact['agreement'] > 0.99
      assert at[('ar', 'greedy', batch)]['nfe_per_token'] == 1
      one_per_step = at[('dllm', 'threshold 1.0 (= 1 token/step)', batch)]
      assert one_per_step['agreement'] == exact['agreement'] and one_per_step['nfe_per_token'] == 1
      assert at[('dllm', '4 steps', batch)]['nfe_per_token'] == 0.25
      cached = at[('dllm', 'threshold 0.7 + cache', batch)]
      assert 1 / 8 <= cached['nfe_per_token'] <= cached['batch_nfe_per_token'] <= 1
    for r in result['rows']:
      assert r['gen_ppl'] > 1 and 0 <= r['entropy'] <= np.log(16) and r['tokens_per_sec'] > 0
      assert 0 <= r['exact_continuations'] <= r['reference_match'] <= 1
    assert result['reference_gen_ppl'] > 1
  elif task == 'speed':
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
  # benchmark() raises if the per-step loop, the jitted sampler or the adaptive one at
  # threshold 1 differ in any token.
  row = sample_speed.benchmark(tiny_config, batch_size=3, gen_length=16, steps=8,
                               block_length=4, prompt_len=5, repeats=1, peak_flops=1e12)
  assert row['canvas_length'] == 21 and row['token_agreement'] == 1.0
  assert row['adaptive_over_jitted'] == pytest.approx(row['adaptive_s'] / row['jitted_s'])
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


def test_accelerator_script_records_every_part_and_goes_on_after_failures(tmp_path):
  """Every command fails at once (`false` for python): each part is still tried and recorded
  with its status, and the script exits 1; with no time left, parts are skipped."""
  script = os.path.join(REPO, 'experiments', 'accelerator', 'run.sh')
  run = lambda out, **env: subprocess.run(['bash', script, '--smoke', str(out)], cwd=REPO,
                                          capture_output=True, text=True, timeout=60,
                                          env=dict(os.environ, PYTHON='false', **env))
  proc = run(tmp_path / 'failing')
  assert proc.returncode == 1, proc.stderr
  parts = [json.loads(line) for line in (tmp_path / 'failing' / 'parts.jsonl').open()]
  assert [p['part'] for p in parts] == ['train_llada_100m_cudnn', 'sample_llada_1b',
                                        'sample_llada_small', 'train_llada_100m_xla']
  assert parts[0]['status'] == 'skipped: needs an NVIDIA GPU (backend: unknown)'
  assert all(p['status'].startswith('failed (exit 1') for p in parts[1:])
  assert '--config=configs/llada_1b.py' in parts[1]['command']
  text = accelerator.summarize(str(tmp_path / 'failing'))
  assert '| sample_llada_1b | failed (exit 1; see sample_llada_1b.log) |' in text
  proc = run(tmp_path / 'late', TOTAL_S='0')
  parts = [json.loads(line) for line in (tmp_path / 'late' / 'parts.jsonl').open()]
  assert [p['status'] for p in parts[1:]] == ['skipped: no time left'] * 3


def test_accelerator_summary_tabulates_the_rows(tmp_path):
  train_row = {'config': {'batch_size': 32, 'seq_len': 1024}, 'params_millions': 113.7,
               'step_time_s': 0.066, 'tokens_per_sec': 496_000, 'tflops_per_device': 394.0,
               'mfu': 0.398, 'peak_tflops_per_device': 989.0, 'peak_source': 'table',
               'compile_s': 31.0}
  sample_row = {'params_millions': 1028.8, 'dtype': 'bfloat16', 'batch_size': 16,
                'step_latency_s': 0.0096, 'roofline_step_s': 0.0048,
                'step_latency_over_roofline': 2.0, 'forward_latency_s': 0.009,
                'jitted_tokens_per_sec': 1666, 'cached_tokens_per_sec': 4000,
                'loop_tokens_per_sec': 1500, 'speedup': 1.11, 'cached_speedup': 2.67,
                'cached_agreement': 0.9, 'adaptive_over_jitted': 1.02, 'gen_length': 128,
                'canvas_length': 144, 'steps': 128, 'block_length': 32, 'peak_tflops': 989.0}
  part = dict(status='ok', seconds=60, budget_s=120, command='python -m ...')
  (tmp_path / 'env.json').write_text(json.dumps(
      {'date': '2026-12-02', 'device_kind': 'NVIDIA H200', 'device_count': 1,
       'peak_tflops_per_device': 989.0, 'jax': '0.10.2'}) + '\n')
  (tmp_path / 'parts.jsonl').write_text(
      json.dumps(dict(part, part='t', kind='train', config='llada_100m.py', attention='cudnn'))
      + '\n' + json.dumps(dict(part, part='s', kind='sample', config='llada_1b.py',
                               attention='xla')) + '\n')
  (tmp_path / 't.jsonl').write_text(json.dumps(train_row) + '\n')
  (tmp_path / 's.jsonl').write_text(json.dumps(sample_row) + '\n')
  text = accelerator.summarize(str(tmp_path))
  assert text.startswith('# Accelerator figures: 1 x NVIDIA H200, 2026-12-02')
  assert ('| `llada_100m.py` | cudnn | 114M | 32 x 1024 | 66 ms | 496,000 | 394 | 39.8% of 989 '
          '(table) | 31 s | NVIDIA H200 | 2026-12-02 |') in text
  assert ('| `llada_1b.py` | 1.03B | bfloat16 | 16 | 9.6 ms | 4.8 ms | 2.00x | 9 ms | '
          '1,666 | 4,000 | 1,500 | 1.11x (2.67x) | 90.0% | 1.020x |') in text


def test_frontier_projection_follows_the_roofline():
  from dllm_jax.benchmarks import frontier  # pylint: disable=g-import-not-at-top
  geometry = dict(block=32, prompt_len=32, gen_length=128, device='H200')
  one, half = (frontier.project(n, batch=1, **geometry) for n in (1.0, 0.5))
  # Batch 1 is memory-bound for both: one call per token costs what AR does; half the calls
  # is twice the speed.
  assert one['dllm_tokens_per_sec'] == pytest.approx(one['ar_tokens_per_sec'])
  assert half['dllm_tokens_per_sec'] == pytest.approx(2 * one['dllm_tokens_per_sec'])
  # At batch 16 the dLLM's 32 positions per row are compute-bound and AR's one is not.
  wide = frontier.project(1.0, batch=16, **geometry)
  assert wide['dllm_tokens_per_sec'] < wide['ar_tokens_per_sec']
  crossovers = [frontier.crossover_batch(n, **geometry) for n in (1.0, 0.5, 0.1)]
  assert crossovers == sorted(crossovers) and crossovers[0] == 1
  # Block diffusion's calls run two blocks at most: at 1024 tokens and batch 16 its exact
  # cache beats the dual cache's full-canvas first calls; its grid has no dual-cache rows.
  long = dict(geometry, gen_length=1024, block=4)
  exact, dual = (frontier.project(0.5, batch=16, exact_cache=e, **long) for e in (True, False))
  assert exact['dllm_tokens_per_sec'] > dual['dllm_tokens_per_sec']
  grid = frontier.dllm_settings(16, 4, exact_cache=True)
  assert all(not s.get('block_cache') and s['block_length'] == 4 for _, s in grid)
