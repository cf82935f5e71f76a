"""Checkpoints: the only module that talks to orbax.

A checkpoint holds the training state (parameters, optimizer state, EMA, step, RNG), the
grain iterator state of every process and a small JSON record of what produced it (the model
config and tokenizer), all saved together by one `CheckpointManager` with keep-last-N and
asynchronous writes. Orbax writes into a temporary directory and renames it when complete,
so a crash mid-save never leaves a half-written checkpoint that looks valid.
"""

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from dllm_jax import model as model_lib


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be read or does not fit the current config."""


def locate(path: str) -> tuple[str, int | None]:
  """A run directory (holding checkpoints/), a checkpoints directory or one step's directory
  -> (the checkpoints directory, the step, or None for the latest)."""
  path = os.path.abspath(path.rstrip('/'))
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    return os.path.join(path, 'checkpoints'), None
  if os.path.basename(path).isdigit():
    return os.path.dirname(path), int(os.path.basename(path))
  return path, None


class Checkpointer:

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    self.directory = os.path.abspath(directory)
    if read_only and not os.path.isdir(self.directory):
      raise CheckpointError(f'no checkpoint directory at {self.directory}.')
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None,
                                             save_interval_steps=0)
    else:
      options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': grain.checkpoint.CheckpointHandler(),
                       'meta': ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iterator, meta: dict) -> None:
    """Starts saving (asynchronously where enabled); `wait()` blocks until it is on disk."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        meta=ocp.args.JsonSave(meta)), force=True)

  def read_meta(self, step: int) -> dict:
    try:
      args = ocp.args.Composite(meta=ocp.args.JsonRestore())
      return self._manager.restore(step, args=args)['meta']
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(self._unreadable(step, e)) from e

  def restore(self, step: int, abstract_state: Any, data_iterator, meta: dict) -> Any:
    """Restores `state` onto the shardings of `abstract_state` and the iterator in place.

    `meta` is what this run would save; a checkpoint made with a different model is refused
    with the differing fields named, rather than failing deep inside orbax.
    """
    saved = self.read_meta(step)
    diff = {k: (saved.get(k), v) for k, v in meta.items() if saved.get(k) != v}
    if diff:
      lines = '; '.join(f'{k}: checkpoint has {a!r}, config has {b!r}'
                        for k, (a, b) in diff.items())
      raise CheckpointError(f'checkpoint {step} in {self.directory} does not fit the config '
                            f'({lines}); use another --workdir or the same config.')
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=grain.checkpoint.CheckpointRestore(data_iterator)))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(self._unreadable(step, e)) from e
    return restored['state']

  def restore_params(self, step: int, abstract_params: Any, which: str = 'params') -> Any:
    """Only the parameters (or 'ema_params') of a checkpoint, onto `abstract_params`'s
    shardings: what sampling and evaluation need, without the optimizer state.

    Converted checkpoints store each layer's tensors apart ('layout': 'per_layer', so the
    converter never holds a parameter of all layers); they are stacked here, on device.
    """
    reader = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            read_only=True, create=False, max_to_keep=None, save_interval_steps=0),
        item_handlers={'state': ocp.PyTreeCheckpointHandler()})
    try:
      meta = self.read_meta(step)
      if which == 'ema_params' and not meta.get('ema'):
        raise CheckpointError(f'checkpoint {step} in {self.directory} has no EMA parameters '
                              '(it was trained with train.ema_decay=0).')
      stored = abstract_params
      if meta.get('layout') == 'per_layer':
        blocks = abstract_params['blocks']
        n_layers = next(iter(blocks.values())).shape[0]
        per_layer = {name: jax.ShapeDtypeStruct(a.shape[1:], a.dtype,
                                                sharding=model_lib.layer_sharding(a.sharding))
                     for name, a in blocks.items()}
        stored = {k: v for k, v in abstract_params.items() if k != 'blocks'}
        stored['layers'] = {str(i): dict(per_layer) for i in range(n_layers)}
      item = {which: stored}
      args = ocp.args.PyTreeRestore(item=item, partial_restore=True,
                                    restore_args=ocp.checkpoint_utils.construct_restore_args(item))
      params = reader.restore(step, args=ocp.args.Composite(state=args))['state'][which]
      if 'layers' in params:
        params['blocks'] = model_lib.stack_layers(params.pop('layers'),
                                                  lambda name: blocks[name].sharding)
      return params
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(self._unreadable(step, e)) from e
    finally:
      reader.close()

  def _unreadable(self, step, error) -> str:
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    return (f'checkpoint {step} in {self.directory} cannot be read ({type(error).__name__}: '
            f'{first_line}); it is not used and nothing was overwritten. Move that step\'s '
            'directory away to resume from an earlier one, or use another --workdir.')

  def reached_preemption(self, step: int) -> bool:
    """True on every process once a multi-host preemption notice has been synchronised."""
    return jax.process_count() > 1 and self._manager.reached_preemption(step)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
