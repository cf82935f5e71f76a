"""train_and_evaluate end to end on the tiny config: learning, sharding, resume, failures."""

import glob
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
from dllm_jax import diffusion
from dllm_jax import metrics as metrics_lib
from dllm_jax import model as model_lib
from dllm_jax import sharding
from dllm_jax import train
from dllm_jax.benchmarks import train_memory


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
    measure = lambda p: train.evaluate(exp, p, [jax.device_get(batch)] * 4)[0]
    before = measure(state.params)
    for _ in range(40):
      # One step at a time: dozens of sharded steps queued at once can starve XLA:CPU's
      # collectives on a loaded 2-core machine (a rendezvous timeout aborts the process).
      state, metrics = exp.train_step(state, batch)
      jax.block_until_ready(metrics)
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
  # Evaluations draw eval.t_samples t per row and report their standard error; they are the
  # evaluation of --config.mode=eval, which gives the same figures for the same step.
  assert all(0 < r['eval_stderr_bits'] < 0.5 for r in rows if 'eval_bits_per_token' in r)
  tiny_config.mode = 'eval'
  tiny_config.eval.discrete_steps = 0
  report = train.evaluate_checkpoint(tiny_config, str(tmp_path))['continuous']
  assert report['bits_per_token'] == pytest.approx(rows[-1]['eval_bits_per_token'], rel=1e-6)
  assert report['stderr_bits'] == pytest.approx(rows[-1]['eval_stderr_bits'], rel=1e-4)


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


def squared_norm_loss(params, batch, key):
  """|w|^2 with the aux sums of a loss_fn: its gradient step is w - lr * 2w."""
  del batch, key
  s = jnp.sum(params['w'] ** 2)
  one = jnp.float32(1.0)
  return s, {'nelbo_sum': s, 'normalizer': one, 'masked': one, 'targets': one}


def test_ema_tracks_the_parameters():
  loss_fn = squared_norm_loss
  optimizer = optax.sgd(0.5)
  params = {'w': jnp.ones(3)}
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=optimizer.init(params), ema_params=params,
                           rng=jax.random.key_data(jax.random.key(0)))
  batch = {'tokens': jnp.zeros((2, 2), jnp.int32), 'valid': jnp.ones((2, 2), bool)}
  new, _ = train.make_train_step(loss_fn, optimizer, lambda s: 0.5, 1, 0.9)(state, batch)
  np.testing.assert_allclose(new.params['w'], np.zeros(3), atol=1e-6)  # w = 1 - 0.5 * 2w
  np.testing.assert_allclose(new.ema_params['w'], 0.9 * 1.0 + 0.1 * new.params['w'], rtol=1e-6)


def test_ema_warmup_decays_by_min_d_and_1_plus_t_over_10_plus_t():
  loss_fn = squared_norm_loss
  optimizer = optax.sgd(0.25)
  params = {'w': jnp.ones(3)}
  batch = {'tokens': jnp.zeros((2, 2), jnp.int32), 'valid': jnp.ones((2, 2), bool)}
  step_fn = jax.jit(train.make_train_step(loss_fn, optimizer, lambda s: 0.25, 1, 0.9,
                                          ema_warmup=True))
  for t, decay in ((0, 0.1), (5, 0.4), (80, 0.9), (10_000, 0.9)):  # (1 + t) / (10 + t) vs 0.9
    state = train.TrainState(step=jnp.int32(t), params=params, opt_state=optimizer.init(params),
                             ema_params=params, rng=jax.random.key_data(jax.random.key(0)))
    new, _ = step_fn(state, batch)
    np.testing.assert_allclose(new.params['w'], 0.5)  # w - 0.25 * 2w
    np.testing.assert_allclose(new.ema_params['w'], decay * 1.0 + (1 - decay) * 0.5, rtol=1e-6)


def _abstract_batch(config, exp):
  return {k: jax.ShapeDtypeStruct((config.train.batch_size, config.data.seq_len),
                                  jnp.int32 if k == 'tokens' else jnp.bool_,
                                  sharding=exp.batch_sharding)
          for k in train.batch_fields(config)}


def test_gradient_accumulator_is_laid_out_as_the_parameters(tiny_config):
  tiny_config.train.microbatches = 2
  tiny_config.mesh.update(data=2, fsdp=2, tensor=2)
  mesh = sharding.make_mesh(tiny_config.mesh)
  with sharding.use_mesh(mesh, tiny_config.logical_axis_rules):
    exp = train.build(tiny_config, mesh, data_lib.ByteTokenizer())
    step = jax.make_jaxpr(exp.train_step)(exp.abstract_state, _abstract_batch(tiny_config, exp))
  jaxpr = step.eqns[0].params['jaxpr'].jaxpr  # inside the jit
  made_by = {var: eqn for eqn in jaxpr.eqns for var in eqn.outvars}
  scan = next(eqn for eqn in jaxpr.eqns if eqn.primitive.name == 'scan')  # the microbatches
  wanted = [p.sharding for p in jax.tree.leaves(exp.abstract_state.params)]
  accumulators = scan.invars[scan.params['num_consts']:][:len(wanted)]
  assert any(s.spec != jax.sharding.PartitionSpec() for s in wanted)
  for var, want in zip(accumulators, wanted):
    assert made_by[var].primitive.name == 'sharding_constraint', made_by[var]
    assert made_by[var].params['sharding'] == want


def test_the_first_step_draws_other_randomness_than_the_init(tiny_config, monkeypatch):
  """Step 0's key (its t and masks) must not be the key that initialised the parameters."""
  seen = {}

  def record(name, key):
    jax.debug.callback(lambda k: seen.setdefault(name, np.asarray(k)), jax.random.key_data(key))

  def recording_loss_fn(*args, **kwargs):
    del args, kwargs

    def loss_fn(params, batch, key):  # records its key; no network, for a fast compile
      del batch
      record('step', key)
      zero = 0.0 * sum(jnp.sum(x) for x in jax.tree.leaves(params))
      one = jnp.float32(1.0)
      return zero, {'nelbo_sum': zero, 'normalizer': one, 'masked': one, 'targets': one}

    return loss_fn

  init_params = model_lib.init_params

  monkeypatch.setattr(model_lib, 'init_params',
                      lambda cfg, key: (record('init', key), init_params(cfg, key))[1])
  monkeypatch.setattr(diffusion, 'make_loss_fn', recording_loss_fn)
  tiny_config.mesh.update(data=1)
  mesh = sharding.make_mesh(tiny_config.mesh, jax.devices()[:1])
  batch = {'tokens': np.full((8, 32), 97, np.int32), 'valid': np.ones((8, 32), bool)}
  with sharding.use_mesh(mesh, tiny_config.logical_axis_rules):
    exp = train.build(tiny_config, mesh, data_lib.ByteTokenizer())
    state = exp.init()
    jax.block_until_ready(exp.train_step(state, train.global_batch(batch, exp.batch_sharding)))
  jax.effects_barrier()
  assert set(seen) == {'init', 'step'}
  assert not np.array_equal(seen['init'], seen['step'])


def test_a_resumed_run_logs_each_step_once(tmp_path):
  """Steps after the restored checkpoint, logged before a crash, are redone and logged anew."""
  writer = metrics_lib.MetricWriter(str(tmp_path), 10, 0, False)
  for step in range(1, 6):
    writer.write(step, {'loss': float(step)})
  writer.close()
  with open(tmp_path / 'metrics.jsonl', 'a', encoding='utf-8') as f:
    f.write('{"step": 6, "lo')  # the crash cut a line short
  writer = metrics_lib.MetricWriter(str(tmp_path), 10, 3, False)  # resumed from step 3
  for step in range(4, 7):
    writer.write(step, {'loss': 10.0 * step})
  writer.close()
  rows = read_metrics(tmp_path)
  assert [r['step'] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert [r['loss'] for r in rows] == [1, 2, 3, 40, 50, 60]


def test_sft_logs_its_loss_in_nats_under_its_own_name(tiny_config):
  tiny_config.train.objective = 'sft'
  mesh = sharding.make_mesh(tiny_config.mesh)
  with sharding.use_mesh(mesh, tiny_config.logical_axis_rules):
    exp = train.build(tiny_config, mesh, data_lib.ByteTokenizer())
    _, metrics = jax.eval_shape(exp.train_step, exp.abstract_state,
                                _abstract_batch(tiny_config, exp))
  assert 'sft_loss' in metrics and 'bits_per_token' not in metrics
  assert train.eval_figures('sft', 1.5, 0.1) == {'sft_loss': 1.5, 'sft_loss_stderr': 0.1}
  assert train.loss_figures('elbo', math.log(2.0)) == {'bits_per_token': 1.0}


def test_the_train_step_attends_without_a_key_mask(tiny_config, monkeypatch):
  """Training rows are never partly padded, so the train step runs attention without a dense
  key mask (cuDNN's faster path); validation rows may be, so evaluation keeps it."""
  masks = []
  attention = jax.nn.dot_product_attention

  def recording_attention(*args, mask=None, **kwargs):
    masks.append(mask)
    return attention(*args, mask=mask, **kwargs)

  monkeypatch.setattr(jax.nn, 'dot_product_attention', recording_attention)
  mesh = sharding.make_mesh(tiny_config.mesh)
  with sharding.use_mesh(mesh, tiny_config.logical_axis_rules):
    exp = train.build(tiny_config, mesh, data_lib.ByteTokenizer())
    batch = _abstract_batch(tiny_config, exp)
    exp.train_step.lower(exp.abstract_state, batch)
    assert masks and all(m is None for m in masks)
    masks.clear()
    exp.eval_step.lower(exp.abstract_state.params, batch, jax.random.key(0))
    assert masks and all(m is not None for m in masks)
  whole_rows = {'valid': np.array([[1, 1, 1, 1], [0, 0, 0, 0]], bool)}  # e.g. an SFT row
  assert train._whole_rows(whole_rows) is whole_rows  # pylint: disable=protected-access
  with pytest.raises(data_lib.DataError, match='partly padded row'):
    train._whole_rows({'valid': np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)})


def test_step_memory_does_not_grow_with_seq_times_vocab(tiny_config):
  """At LLaDA's 126,464-token vocabulary and a small width, float32 logits at every position
  would add about 3 x batch x seq x vocab x 4 bytes of temporaries (logits, their softmax and
  gradient); computed a chunk at a time, longer rows add only activations."""
  tiny_config.model.vocab_size = 126464
  short, long = (train_memory.measure(tiny_config, seq_len) for seq_len in (128, 256))
  added_logits = long['logits_bytes'] - short['logits_bytes']  # 0.5 GB
  assert long['temp_bytes'] - short['temp_bytes'] < 0.1 * added_logits, (short, long)


def _run_two_processes(tmp_path, args, process_args=((), ()), timeout=300):
  """dllm_jax.main as two JAX processes on localhost (4 CPU devices each, gloo collectives);
  -> (each one's return code, None if still running at `timeout` (then killed), its seconds
  to exit, its output)."""
  import portpicker  # pylint: disable=g-import-not-at-top
  port = portpicker.pick_unused_port()
  common = ['--config=configs/llada_small.py:tiny', *args,
            '--config.distributed.initialize=True', '--config.distributed.num_processes=2',
            f'--config.distributed.coordinator_address=localhost:{port}']
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  logs = [tmp_path / f'process_{i}.log' for i in range(2)]
  procs, start = [], time.time()
  for i, log in enumerate(logs):  # files, not pipes: a full pipe would stall one process
    with open(log, 'wb') as out:
      procs.append(subprocess.Popen(
          [sys.executable, '-m', 'dllm_jax.main', *common, *process_args[i],
           f'--config.distributed.process_id={i}'],
          cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
  ended = [None, None]
  while None in ended and time.time() < start + timeout:
    for i, p in enumerate(procs):
      if ended[i] is None and p.poll() is not None:
        ended[i] = time.time() - start
    time.sleep(0.1)
  codes = [p.poll() for p in procs]
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()
  return codes, ended, [log.read_text() for log in logs]


def test_two_processes_train_on_one_file_as_one_process_does(tiny_config, tmp_path):
  """Two JAX processes share one run over a single-file corpus and see the global batches
  of one process on as many devices: the same losses and validation bits per token."""
  corpus = tmp_path / 'corpus.py'
  corpus.write_text(''.join(open(f, encoding='utf-8').read() for f in
                            sorted(glob.glob(os.path.join(tiny_config.data.files, '*')))))
  settings = {'data.files': str(corpus), 'data.data_dir': tiny_config.data.data_dir,
              'train.num_steps': 6, 'train.checkpoint_every': 6, 'train.eval_every': 6,
              'train.log_every': 2, 'train.warmup_steps': 1, 'mesh.fsdp': 2, 'mesh.tensor': 2,
              'sampling.num_samples': 0}
  workdir = str(tmp_path / 'two')
  codes, _, outputs = _run_two_processes(
      tmp_path, [f'--workdir={workdir}', *(f'--config.{k}={v}' for k, v in settings.items())])
  for code, out in zip(codes, outputs):
    assert code == 0, out[-3000:]
  assert 'process 1 of 2; 8 devices' in outputs[1]
  two = read_metrics(workdir)  # written by process 0 only
  assert [r['step'] for r in two] == [2, 4, 6] and 'eval_bits_per_token' in two[-1]
  data_dir = os.path.join(workdir, 'checkpoints', '6', 'data')
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(os.listdir(data_dir))

  tiny_config.update_from_flattened_dict(settings)
  train.train_and_evaluate(tiny_config, str(tmp_path / 'one'))
  one = read_metrics(str(tmp_path / 'one'))
  np.testing.assert_allclose([r['loss'] for r in two], [r['loss'] for r in one], rtol=1e-5)
  np.testing.assert_allclose(two[-1]['eval_bits_per_token'], one[-1]['eval_bits_per_token'],
                             rtol=1e-5)


def test_an_error_on_one_process_ends_both_promptly(tiny_config, tmp_path):
  """Process 1 alone cannot find its data; process 0, waiting for it in a collective, stops
  too, with process 1's error, instead of hanging until a heartbeat times out."""
  files = [tiny_config.data.files, str(tmp_path / 'missing' / '*.txt')]
  codes, ended, outputs = _run_two_processes(
      tmp_path, [f'--workdir={tmp_path / "run"}',
                 f'--config.data.data_dir={tiny_config.data.data_dir}'],
      [[f'--config.data.files={f}'] for f in files], timeout=120)
  assert codes == [1, 1], outputs
  assert max(ended) - min(ended) < 20, ended
  for out in outputs:
    assert 'matches no files' in out.strip().splitlines()[-1], out[-3000:]
  assert 'process 1' in outputs[0].strip().splitlines()[-1]


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


def test_an_autoregressive_run_starts_a_block_diffusion_model(tiny_config, tmp_path):
  """train.init_from takes an AR checkpoint into a diffusion config (attention is no
  parameter); the new run starts from its weights and keeps its own objective, block size
  and t_range, and resuming it is checked against them."""
  from dllm_jax import generate  # pylint: disable=g-import-not-at-top
  ar = tiny_config.copy_and_resolve_references()
  ar.model.causal, ar.train.objective = True, 'ar'
  ar.train.update(num_steps=2, eval_every=2, checkpoint_every=2)
  train.train_and_evaluate(ar, str(tmp_path / 'ar'))
  tiny_config.diffusion.update(block_size=4, t_range=(0.3, 0.8))
  tiny_config.train.update(init_from=str(tmp_path / 'ar'), num_steps=1, learning_rate=1e-9,
                           warmup_steps=0, eval_every=1, checkpoint_every=1)
  train.train_and_evaluate(tiny_config, str(tmp_path / 'bd'))
  start, adapted = generate.load(workdir=str(tmp_path / 'ar')), generate.load(
      workdir=str(tmp_path / 'bd'))
  assert adapted.block_size == 4 and not adapted.config.causal
  chex.assert_trees_all_close(adapted.params, start.params, atol=1e-6)
  tiny_config.diffusion.block_size = 8
  tiny_config.train.num_steps = 2
  with pytest.raises(ckpt_lib.CheckpointError, match='block_size: checkpoint has 4'):
    train.train_and_evaluate(tiny_config, str(tmp_path / 'bd'))
