"""train_and_evaluate end to end on the tiny config: learning, sharding, resume, failures."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO
from dllm_jax import checkpoint as ckpt_lib
from dllm_jax import data as data_lib
from dllm_jax import sharding
from dllm_jax import train


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def constant_lr(config):
  """Warmup then a flat rate, so runs of different lengths share a schedule."""
  config.train.update(min_lr_ratio=1.0, warmup_steps=2)
  return config


def test_training_lowers_the_loss_on_a_fixed_batch(tiny_config):
  tiny_config.train.update(learning_rate=1e-2, warmup_steps=0, min_lr_ratio=1.0)
  mesh = sharding.make_mesh(tiny_config.mesh)
  tok = data_lib.ByteTokenizer()
  rng = np.random.default_rng(0)
  batch = {'tokens': rng.integers(97, 123, (8, 32)).astype(np.int32),
           'valid': np.ones((8, 32), bool)}
  with sharding.use_mesh(mesh, tiny_config.logical_axis_rules):
    exp = train.build(tiny_config, mesh, tok)
    state = exp.init()
    batch = train.global_batch(batch, exp.batch_sharding)
    measure = lambda p: train.evaluate(exp, p, [jax.device_get(batch)] * 4, jax.random.key(0))
    before = measure(state.params)
    for _ in range(40):
      state, _ = exp.train_step(state, batch)
    after = measure(state.params)
  assert int(state.step) == 40
  assert after < 0.6 * before, (before, after)
  chex.assert_tree_all_finite(state.params)


def test_a_run_writes_metrics_checkpoints_and_tensorboard(tiny_config, tmp_path):
  summary = train.train_and_evaluate(tiny_config, str(tmp_path))
  rows = read_metrics(tmp_path)
  assert [r['step'] for r in rows] == [5, 10, 15, 20]
  for row in rows:
    for key in ('loss', 'tokens_per_sec', 'bits_per_token', 'grad_norm', 'learning_rate',
                'step_time_s', 'tflops_per_device'):
      assert math.isfinite(row[key]), key
    assert 'mfu' not in row  # the CPU is not in the peak table
  assert {r['step'] for r in rows if 'eval_bits_per_token' in r} == {10, 20}
  assert rows[-1]['eval_bits_per_token'] < 8.0  # below the uniform bound over 259 ids
  assert summary['eval_nelbo'][20] == pytest.approx(rows[-1]['eval_nelbo_nats'])
  assert ckpt_lib.Checkpointer(str(tmp_path / 'checkpoints')).all_steps() == [10, 20]
  assert os.listdir(tmp_path / 'tensorboard')
  assert json.load(open(tmp_path / 'config.json'))['model']['d_model'] == 64


def test_mfu_is_reported_given_a_peak(tiny_config, tmp_path):
  tiny_config.train.peak_flops_per_device = 1e11
  tiny_config.train.num_steps = 5
  tiny_config.train.warmup_steps = 1
  train.train_and_evaluate(tiny_config, str(tmp_path))
  row = read_metrics(tmp_path)[-1]
  assert row['mfu'] == pytest.approx(row['tflops_per_device'] * 1e12 / 1e11)


def test_sharded_training_matches_a_single_device(tiny_config, tmp_path):
  tiny_config.train.update(num_steps=6, eval_every=6, checkpoint_every=6, log_every=1)
  tiny_config.mesh.update(data=2, fsdp=2, tensor=2)
  sharded = train.train_and_evaluate(tiny_config, str(tmp_path / 'sharded'))
  tiny_config.mesh.update(data=1, fsdp=1, tensor=1)
  single = train.train_and_evaluate(tiny_config, str(tmp_path / 'single'), jax.devices()[:1])
  steps = sorted(single['losses'])
  assert steps == list(range(1, 7))
  np.testing.assert_allclose([sharded['losses'][s] for s in steps],
                             [single['losses'][s] for s in steps], rtol=2e-5)
  np.testing.assert_allclose(sharded['eval_nelbo'][6], single['eval_nelbo'][6], rtol=2e-5)


def test_resume_is_exact(tiny_config, tmp_path):
  constant_lr(tiny_config).train.update(num_steps=12, checkpoint_every=3, eval_every=12,
                                        microbatches=2, ema_decay=0.9)
  tiny_config.train.batch_size = 16
  straight = train.train_and_evaluate(tiny_config, str(tmp_path / 'straight'))
  tiny_config.train.num_steps = 6
  first = train.train_and_evaluate(tiny_config, str(tmp_path / 'resumed'))
  tiny_config.train.num_steps = 12
  second = train.train_and_evaluate(tiny_config, str(tmp_path / 'resumed'))
  assert second['start_step'] == 6
  resumed = {**first['losses'], **second['losses']}
  assert resumed == straight['losses']  # bit for bit on CPU
  assert second['eval_nelbo'][12] == straight['eval_nelbo'][12]


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_config, tmp_path):
  constant_lr(tiny_config).train.update(num_steps=3000, log_every=1, eval_every=3000,
                                        checkpoint_every=3000)
  workdir = str(tmp_path / 'run')
  overrides = [f'--config.{k}={v}' for k, v in [
      ('data.files', tiny_config.data.files), ('data.data_dir', tiny_config.data.data_dir),
      ('train.num_steps', 3000), ('train.log_every', 1), ('train.eval_every', 3000),
      ('train.checkpoint_every', 3000), ('train.min_lr_ratio', 1.0), ('train.warmup_steps', 2),
      ('train.progress_bar', False)]]
  proc = subprocess.Popen(
      [sys.executable, '-m', 'dllm_jax.main', '--config=configs/llada_small.py:tiny',
       f'--workdir={workdir}', *overrides], cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics_path) and len(read_metrics(workdir)) >= 5:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=120)[0].decode()
  assert proc.returncode == 0, output[-3000:]
  stopped_at = max(r['step'] for r in read_metrics(workdir))
  assert 5 <= stopped_at < 3000
  assert ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints')).all_steps() == [stopped_at]

  # The interrupted run, resumed, retraces the uninterrupted one exactly.
  tiny_config.train.update(num_steps=stopped_at + 3, log_every=1, checkpoint_every=1000)
  resumed = train.train_and_evaluate(tiny_config, workdir)
  straight = train.train_and_evaluate(tiny_config, str(tmp_path / 'straight'))
  before = {r['step']: r['loss'] for r in read_metrics(workdir) if r['step'] <= stopped_at}
  np.testing.assert_allclose([{**before, **resumed['losses']}[s] for s in range(1, stopped_at + 4)],
                             [straight['losses'][s] for s in range(1, stopped_at + 4)], rtol=1e-6)


def test_divergence_stops_with_a_clear_error_and_keeps_good_checkpoints(tiny_config, tmp_path):
  tiny_config.train.update(num_steps=10, checkpoint_every=5)
  train.train_and_evaluate(tiny_config, str(tmp_path))
  tiny_config.train.update(num_steps=60, learning_rate=1e9, warmup_steps=0, min_lr_ratio=1.0)
  with pytest.raises(train.TrainingDiverged, match=r'is (nan|inf) at step \d+.*last good'):
    train.train_and_evaluate(tiny_config, str(tmp_path))
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / 'checkpoints'))
  assert checkpointer.latest_step() >= 10
  meta = checkpointer.read_meta(checkpointer.latest_step())
  assert meta['model']['d_model'] == 64


def test_corrupt_checkpoint_is_a_clear_error_and_is_kept(tiny_config, tmp_path):
  tiny_config.train.update(num_steps=10, checkpoint_every=10)
  train.train_and_evaluate(tiny_config, str(tmp_path))
  state_dir = tmp_path / 'checkpoints' / '10' / 'state'
  for root, _, files in os.walk(state_dir):
    for name in files:
      if name != '_METADATA':
        with open(os.path.join(root, name), 'wb') as f:
          f.write(b'garbage')
  tiny_config.train.num_steps = 20
  with pytest.raises(ckpt_lib.CheckpointError, match='checkpoint 10 .* cannot be read'):
    train.train_and_evaluate(tiny_config, str(tmp_path))
  assert os.path.isdir(state_dir)  # never deleted or silently replaced


def test_checkpoint_from_another_model_is_refused(tiny_config, tmp_path):
  tiny_config.train.update(num_steps=5, checkpoint_every=5, warmup_steps=1)
  train.train_and_evaluate(tiny_config, str(tmp_path))
  tiny_config.model.d_model = 32
  tiny_config.train.num_steps = 10
  with pytest.raises(ckpt_lib.CheckpointError, match='does not fit the config.*model'):
    train.train_and_evaluate(tiny_config, str(tmp_path))
  tiny_config.model.d_model = 64
  tiny_config.train.ema_decay = 0.99
  with pytest.raises(ckpt_lib.CheckpointError, match="ema: checkpoint has False"):
    train.train_and_evaluate(tiny_config, str(tmp_path))


def test_gradient_accumulation_equals_the_full_batch_gradient():
  """With a loss that ignores the key, k microbatches give the full batch's update."""
  def loss_fn(params, batch, key):
    del key
    err = (batch['tokens'].astype(jnp.float32) * params['w'] - 1.0) ** 2
    nelbo_sum = jnp.sum(jnp.where(batch['valid'], err, 0.0))
    n = batch['valid'].sum()
    return nelbo_sum / n, {'nelbo_sum': nelbo_sum, 'normalizer': n.astype(jnp.float32),
                           'masked': n.astype(jnp.float32), 'targets': n.astype(jnp.float32)}

  optimizer = optax.sgd(0.1)
  schedule = lambda step: 0.1
  rng = np.random.default_rng(0)
  batch = {'tokens': jnp.asarray(rng.integers(0, 5, (8, 6)), jnp.int32),
           'valid': jnp.asarray(rng.random((8, 6)) < 0.7)}
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params={'w': jnp.float32(0.3)},
                           opt_state=optimizer.init({'w': jnp.float32(0.3)}), ema_params={},
                           rng=jax.random.key_data(jax.random.key(0)))
  outs = [jax.jit(train.make_train_step(loss_fn, optimizer, schedule, k, 0.0))(state, batch)
          for k in (1, 2, 4)]
  for new_state, metrics in outs[1:]:
    np.testing.assert_allclose(new_state.params['w'], outs[0][0].params['w'], rtol=1e-6)
    np.testing.assert_allclose(metrics['loss'], outs[0][1]['loss'], rtol=1e-6)


def test_ema_tracks_the_parameters():
  def loss_fn(params, batch, key):
    del batch, key
    s = jnp.sum(params['w'] ** 2)
    one = jnp.float32(1.0)
    return s, {'nelbo_sum': s, 'normalizer': one, 'masked': one, 'targets': one}

  optimizer = optax.sgd(0.5)
  params = {'w': jnp.ones(3)}
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=optimizer.init(params), ema_params=params,
                           rng=jax.random.key_data(jax.random.key(0)))
  batch = {'tokens': jnp.zeros((2, 2), jnp.int32), 'valid': jnp.ones((2, 2), bool)}
  new, _ = train.make_train_step(loss_fn, optimizer, lambda s: 0.5, 1, 0.9)(state, batch)
  np.testing.assert_allclose(new.params['w'], np.zeros(3), atol=1e-6)  # w = 1 - 0.5 * 2w
  np.testing.assert_allclose(new.ema_params['w'], 0.9 * 1.0 + 0.1 * new.params['w'], rtol=1e-6)


def test_two_processes_train_with_jax_distributed(tiny_config, tmp_path):
  """Two JAX processes on localhost (4 CPU devices each, gloo collectives) share one run."""
  import portpicker  # pylint: disable=g-import-not-at-top
  port = portpicker.pick_unused_port()
  workdir = str(tmp_path / 'run')
  common = ['--config=configs/llada_small.py:tiny', f'--workdir={workdir}',
            f'--config.data.files={tiny_config.data.files}',
            f'--config.data.data_dir={tiny_config.data.data_dir}',
            '--config.train.num_steps=6', '--config.train.checkpoint_every=6',
            '--config.train.eval_every=6', '--config.train.log_every=2',
            '--config.train.warmup_steps=1', '--config.mesh.fsdp=2', '--config.mesh.tensor=2',
            '--config.distributed.initialize=True', '--config.distributed.num_processes=2',
            f'--config.distributed.coordinator_address=localhost:{port}']
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  logs = [tmp_path / f'process_{i}.log' for i in range(2)]
  procs = []
  for i, log in enumerate(logs):  # files, not pipes: a full pipe would stall one process
    with open(log, 'wb') as out:
      procs.append(subprocess.Popen(
          [sys.executable, '-m', 'dllm_jax.main', *common, f'--config.distributed.process_id={i}'],
          cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
  for p in procs:
    p.wait(timeout=300)
  outputs = [log.read_text() for log in logs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert 'process 1 of 2; 8 devices' in outputs[1]
  rows = read_metrics(workdir)  # written by process 0 only
  assert [r['step'] for r in rows] == [2, 4, 6] and 'eval_bits_per_token' in rows[-1]
  data_dir = os.path.join(workdir, 'checkpoints', '6', 'data')
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(os.listdir(data_dir))


def test_cli_reports_a_bad_config_value_in_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'dllm_jax.main', '--config=configs/llada_small.py:tiny',
       f'--workdir={tmp_path}', '--config.diffusion.schedule=quadratic'],
      cwd=REPO, capture_output=True, text=True, timeout=120, env=dict(os.environ,
                                                                     JAX_PLATFORMS='cpu'))
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: config.diffusion.schedule:'), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
