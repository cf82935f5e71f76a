"""Mesh construction and the logical-axis rules."""

import collections
import types

import jax
import pytest
from jax.sharding import PartitionSpec as P

from dllm_jax import sharding
from dllm_jax.config import ConfigError, base_config

RULES = base_config().logical_axis_rules


def mesh_config(**sizes):
  config = base_config().mesh
  config.update(**sizes)
  return config


def test_minus_one_takes_the_remaining_devices():
  assert sharding.mesh_shape(mesh_config(data=-1, fsdp=2, tensor=2), 8) == (2, 2, 2)
  assert sharding.mesh_shape(mesh_config(data=1, fsdp=-1, tensor=1), 8) == (1, 8, 1)
  mesh = sharding.make_mesh(mesh_config(data=2, fsdp=2, tensor=2))
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 2, 'tensor': 2}


@pytest.mark.parametrize('sizes', [dict(data=3, fsdp=1, tensor=1), dict(data=-1, fsdp=3, tensor=1),
                                   dict(data=4, fsdp=4, tensor=1)])
def test_mesh_that_does_not_fit_the_devices_is_a_clear_error(sizes):
  with pytest.raises(ConfigError, match='config.mesh'):
    sharding.mesh_shape(mesh_config(**sizes), 8)


def test_logical_names_map_to_mesh_axes():
  mesh = sharding.make_mesh(mesh_config(data=2, fsdp=2, tensor=2))
  assert sharding.logical_to_spec(('embed', 'mlp'), RULES, mesh) == P('fsdp', 'tensor')
  assert sharding.logical_to_spec(('layers', 'embed', 'heads', 'head_dim'), RULES, mesh) == P(
      None, 'fsdp', 'tensor', None)
  assert sharding.logical_to_spec(('activation_batch', 'activation_length'), RULES, mesh) == P(
      ('data', 'fsdp'), None)
  # Size-1 mesh axes are dropped; a mesh axis shards at most one dimension.
  single = sharding.make_mesh(mesh_config(data=8, fsdp=1, tensor=1))
  assert sharding.logical_to_spec(('embed', 'mlp'), RULES, single) == P(None, None)
  assert sharding.logical_to_spec(('mlp', 'vocab'), RULES, mesh) == P('tensor', None)


def test_uneven_parameter_split_is_a_clear_error_but_activations_fall_back():
  mesh = sharding.make_mesh(mesh_config(data=2, fsdp=2, tensor=2))
  with pytest.raises(ConfigError, match="'mlp'.*size 7"):
    sharding.logical_to_spec(('embed', 'mlp'), RULES, mesh, shape=(8, 7))
  assert sharding.logical_to_spec(('activation_batch', None), RULES, mesh, shape=(1, 5),
                                  strict=False) == P(None, None)


def test_unknown_logical_name_is_a_clear_error():
  with pytest.raises(ConfigError, match="no rule for logical axis 'bogus'"):
    sharding.logical_to_spec(('bogus',), RULES)


def test_constrain_is_a_no_op_without_a_mesh():
  x = jax.numpy.ones((4, 4))
  assert sharding.constrain(x, ('activation_batch', 'activation_embed')) is x


def _as_processes(batch_sharding, process_of):
  """`batch_sharding` as if device d belonged to process `process_of(d.id)`."""
  device = collections.namedtuple('Device', 'id process_index')
  return types.SimpleNamespace(devices_indices_map=lambda shape: {
      device(d.id, process_of(d.id)): index
      for d, index in batch_sharding.devices_indices_map(shape).items()})


def test_each_process_feeds_the_batch_rows_its_devices_hold():
  batch = lambda mesh: sharding.named_sharding(mesh, RULES, ('activation_batch', None))
  rows = lambda layout, p: list(sharding.process_rows(layout, (8, 3), p))
  # Two processes of 4 devices on a (2, 2, 2) mesh: halves of the batch.
  layout = _as_processes(batch(sharding.make_mesh(mesh_config(data=2, fsdp=2, tensor=2))),
                         lambda d: d // 4)
  assert rows(layout, 0) == [0, 1, 2, 3] and rows(layout, 1) == [4, 5, 6, 7]
  # Four processes of 2 devices, the batch replicated over 'tensor', which spans two of
  # them: those two feed the same rows.
  layout = _as_processes(batch(sharding.make_mesh(mesh_config(data=2, fsdp=1, tensor=4))),
                         lambda d: d // 2)
  assert rows(layout, 0) == rows(layout, 1) == [0, 1, 2, 3] and rows(layout, 3) == [4, 5, 6, 7]
  # Devices of two processes interleaved along 'data': every other row, not a block.
  devices = [jax.devices()[i] for i in (0, 4, 1, 5, 2, 6, 3, 7)]
  layout = _as_processes(batch(sharding.make_mesh(mesh_config(data=8), devices)),
                         lambda d: d // 4)
  assert rows(layout, 0) == [0, 2, 4, 6] and rows(layout, 1) == [1, 3, 5, 7]


def test_a_batch_that_processes_cannot_hold_evenly_is_a_clear_error():
  # Three processes over 8 devices (3, 3, 2): process 1 holds devices of both batch halves.
  mesh = sharding.make_mesh(mesh_config(data=2, fsdp=1, tensor=4))
  layout = _as_processes(sharding.named_sharding(mesh, RULES, ('activation_batch', None)),
                         lambda d: d // 3)
  with pytest.raises(ConfigError, match=r'^config.mesh: .* unevenly over the 3 processes '
                     r'\(process 0 holds 4 rows, process 1 8\)'):
    sharding.process_rows(layout, (8, 3), 0)
