"""Mesh construction and the logical-axis rules."""

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
