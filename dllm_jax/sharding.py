"""Device mesh and logical-axis rules.

The only module that knows the mesh axis names. Parameters and activations are annotated
with logical names ('embed', 'heads', 'activation_batch', ...); the config's
`logical_axis_rules` maps each to mesh axes, and this module turns those into
`NamedSharding`s. Inside `use_mesh(mesh, rules)` the model's `constrain()` calls become
sharding constraints; outside it they are no-ops, so the model runs unsharded as well.
"""

import collections
import contextlib
import contextvars
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from dllm_jax.config import MESH_AXES, ConfigError

Rules = Sequence[tuple[str, Any]]

_RULES: contextvars.ContextVar = contextvars.ContextVar('dllm_jax_rules', default=None)
_MESH: contextvars.ContextVar = contextvars.ContextVar('dllm_jax_mesh', default=None)


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
  """Resolves the config's axis sizes (one may be -1) against the device count."""
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(f'config.mesh: fixed axes {dict(zip(MESH_AXES, sizes))} multiply to '
                        f'{known}, which does not divide the {num_devices} devices.')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f'config.mesh: {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} '
                      f'devices but {num_devices} are available; set one axis to -1.')
  return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules,
                    mesh: jax.sharding.Mesh | None = None,
                    shape: Sequence[int] | None = None, strict: bool = True) -> PartitionSpec:
  """Maps logical names to a PartitionSpec.

  With `shape`, a dimension that does not split evenly over its mesh axes is an error when
  `strict` (parameters: the config must change), else left unsharded (an activation whose
  batch is smaller than the data axes, as in batch-1 sampling).
  """
  table = dict(rules)
  used = set()
  spec = []
  for i, name in enumerate(logical_axes):
    if name is not None and name not in table:
      raise ConfigError(f'config.logical_axis_rules: no rule for logical axis {name!r}.')
    target = table.get(name) if name is not None else None
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    # A mesh axis shards at most one dimension; size-1 axes are dropped.
    targets = tuple(t for t in targets
                    if t not in used and (mesh is None or mesh.shape[t] > 1))
    if shape is not None and mesh is not None and targets:
      ways = math.prod(mesh.shape[t] for t in targets)
      if shape[i] % ways and not strict:
        targets = ()
      elif shape[i] % ways:
        raise ConfigError(
            f'config.logical_axis_rules: dimension {i} ({name!r}) of size {shape[i]} does not '
            f'split over mesh axes {targets} ({ways} ways); change the model size or the rules.')
    used.update(targets)
    spec.append(targets[0] if len(targets) == 1 else (targets or None))
  return PartitionSpec(*spec)


def named_sharding(mesh, rules, logical_axes, shape=None) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(logical_axes, rules, mesh, shape))


def tree_shardings(mesh, rules, logical_tree, shape_tree):
  """NamedShardings for a tree of logical PartitionSpecs matching a tree of arrays."""
  return jax.tree.map(lambda axes, x: named_sharding(mesh, rules, tuple(axes), np.shape(x)),
                      logical_tree, shape_tree, is_leaf=lambda x: isinstance(x, PartitionSpec))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def process_rows(batch_sharding, shape: Sequence[int], process_index: int | None = None):
  """The rows of a global batch of `shape` that a process feeds (default: this one).

  They are the rows its devices hold, ascending: the order in which
  `jax.make_array_from_process_local_data` reads a process's rows. Processes whose devices
  hold the same batch shards (a batch replicated over an axis that spans processes) feed
  the same rows. A layout that process-local rows cannot fill, with processes holding
  different numbers of rows or overlapping but different ones, is a ConfigError.
  """
  process_index = jax.process_index() if process_index is None else process_index
  held = collections.defaultdict(set)
  for device, index in batch_sharding.devices_indices_map(tuple(shape)).items():
    held[device.process_index].update(range(*index[0].indices(shape[0])))
  # Even and disjoint (or equal) exactly when the distinct sets are equal in size and their
  # sizes add up to the batch: every row is held somewhere.
  groups = {frozenset(rows) for rows in held.values()}
  if len({len(g) for g in groups}) > 1 or sum(len(g) for g in groups) != shape[0]:
    sizes = {p: len(rows) for p, rows in held.items()}
    few, most = min(sizes, key=sizes.get), max(sizes, key=sizes.get)
    detail = (f'process {few} holds {sizes[few]} rows, process {most} {sizes[most]}'
              if sizes[few] != sizes[most] else 'some share only part of their rows')
    raise ConfigError(
        f'config.mesh: the batch axes lay the {shape[0]} rows of a batch unevenly over the '
        f'{len(held)} processes ({detail}); choose sizes under which each process holds whole '
        'batch shards, e.g. data x fsdp a multiple of the process count.')
  return np.array(sorted(held[process_index]), np.int64)


@contextlib.contextmanager
def use_mesh(mesh: jax.sharding.Mesh, rules: Rules):
  """Activates the mesh (jax.set_mesh) and the logical rules used by `constrain`."""
  mesh_token, rules_token = _MESH.set(mesh), _RULES.set(tuple(rules))
  try:
    with jax.set_mesh(mesh):
      yield mesh
  finally:
    _MESH.reset(mesh_token)
    _RULES.reset(rules_token)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation, by logical names; a no-op outside `use_mesh`."""
  mesh, rules = _MESH.get(), _RULES.get()
  if mesh is None:
    return x
  spec = logical_to_spec(logical_axes, rules, mesh, x.shape, strict=False)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
