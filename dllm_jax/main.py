"""Entry point: python -m dllm_jax.main --config=configs/llada_small.py --workdir=DIR.

Parses flags, starts multi-host JAX when the config asks, logs the devices and calls
`train.train_and_evaluate` (or, with --config.mode=eval, `train.evaluate_checkpoint`).
Errors a person can fix (a bad config value, missing data, an unreadable checkpoint, a
diverged run) end the program with one line saying what to do. On a multi-host job, an
error on one process ends every process with that line (see multihost.py).
"""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from dllm_jax import checkpoint, cli, config as config_lib, multihost, train
from dllm_jax.data import DataError
from dllm_jax.sampling import SamplingError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, optionally with a variant: configs/x.py:tiny.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints and metrics go; a run '
                               'resumes from the latest checkpoint found here.')
flags.mark_flags_as_required(['config', 'workdir'])
cli.define_compilation_cache_flag()

FRIENDLY_ERRORS = (config_lib.ConfigError, DataError, checkpoint.CheckpointError,
                   train.TrainingDiverged, FileNotFoundError, SamplingError)


def initialize_distributed(dist) -> None:
  if not dist.initialize:
    return
  kwargs = {}
  if dist.coordinator_address:
    kwargs = dict(coordinator_address=dist.coordinator_address,
                  num_processes=dist.num_processes, process_id=dist.process_id)
  jax.distributed.initialize(**kwargs)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.quiet_library_logs()
  cli.use_compilation_cache(flags.FLAGS.compilation_cache)
  config = _CONFIG.value
  try:
    config_lib.validate(config)
    initialize_distributed(config.distributed)
    multihost.start_watchdog()
    logging.info('JAX %s: process %d of %d; %d devices (%s), %d local', jax.__version__,
                 jax.process_index(), jax.process_count(), jax.device_count(),
                 jax.devices()[0].device_kind, jax.local_device_count())
    if jax.process_index() != 0:  # one log for the whole job; warnings still come through
      logging.set_verbosity(logging.WARNING)
    job = {'train': train.train_and_evaluate, 'eval': train.evaluate_checkpoint}[config.mode]
    job(config, _WORKDIR.value)
  except FRIENDLY_ERRORS as e:
    multihost.fail(str(e))
  except Exception as e:  # pylint: disable=broad-except
    if not multihost.running():
      raise
    # A bug or a crash: the traceback here, and the other processes must not wait on us.
    logging.exception('process %d failed', jax.process_index())
    multihost.fail(f'{type(e).__name__}: {e}'.splitlines()[0])


if __name__ == '__main__':
  app.run(main)
