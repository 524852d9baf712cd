"""ResNeXt bodies against torchvision's: recorded resnext50_32x4d outputs, resnext101_32x8d keys.

tests/fixtures/torchvision_resnext.npz holds torchvision's resnext50_32x4d body outputs
on seeded weights (tests/tools/record_torchvision_resnext.py); the weights are
regenerated here from the recorded names, shapes and seed and converted with the
torchvision ResNet table (grouped kernels need no special row). Detectron2's X101 is
checked in tests/convert/test_detectron2_weights.py.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax import convert
from maskrcnn_jax.model import resnet
from tests.conftest import FIXTURES
from tests.tools import seeded_weights


def _names_and_shapes(names, shapes):
  return [(str(n), tuple(int(s) for s in shape if s)) for n, shape in zip(names, shapes)]


@pytest.fixture(scope='module')
def recorded():
  return np.load(FIXTURES / 'torchvision_resnext.npz')


def test_resnext50_32x4d_matches_recorded_torchvision(recorded):
  data = recorded
  state_dict = seeded_weights.seeded_state_dict(
      _names_and_shapes(data['names'], data['shapes']), int(data['seed']))
  variables = convert.from_torchvision_resnet(state_dict)
  assert variables['params']['res3']['block0']['conv2']['kernel'].shape == (3, 3, 8, 256)
  body = resnet.ResNet(depth=50, groups=32, width_per_group=4)
  outputs = jax.jit(body.apply)(variables, jnp.asarray(data['images']))
  for key in ('c2', 'c3', 'c4', 'c5'):
    expected = data[key]  # torchvision in float64, a strided subset of channels
    ours = np.asarray(outputs[key])[..., data[f'channels_{key}']]
    assert ours.shape == expected.shape, key
    error = np.abs(ours - expected).max() / np.abs(expected).max()
    assert error < 1e-4, (key, error)


def test_resnext101_32x8d_keys_convert_to_our_tree(recorded):
  """Every key of torchvision's resnext101_32x8d (fc aside) fills ResNet(101, 32, 8)."""
  state_dict = {name: np.broadcast_to(np.float32(0), shape) for name, shape in
                _names_and_shapes(recorded['full_names'], recorded['full_shapes'])}
  variables = convert.from_torchvision_resnet(state_dict)
  body = resnet.ResNet(depth=101, groups=32, width_per_group=8)
  expected = jax.eval_shape(body.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  shapes = lambda tree: jax.tree.map(lambda a: tuple(a.shape), tree)
  assert shapes(variables) == shapes(expected)
  # 32 groups of 8 at res2 (width 256), doubling per stage; outputs 256 .. 2048.
  block = expected['params']['res5']['block0']
  assert block['conv2']['kernel'].shape == (3, 3, 64, 2048)
  assert block['conv3']['kernel'].shape == (1, 1, 2048, 2048)


def test_groups_need_bottlenecks():
  with pytest.raises(ValueError, match='ResNeXt'):
    resnet.ResNet(depth=18, groups=2).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
