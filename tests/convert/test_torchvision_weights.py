"""torchvision -> our variables: the recorded ResNet-50 + FPN outputs, key handling.

tests/fixtures/torchvision_backbone.npz holds the outputs of torchvision's
maskrcnn_resnet50_fpn backbone filled with seeded weights (see
tests/tools/record_torchvision_backbone.py); the weights are regenerated here without
torch from the recorded names, shapes and seed.
"""

import sys

import jax
import numpy as np
import pytest

from maskrcnn_jax import convert
from maskrcnn_jax.convert import torchvision_weights
from maskrcnn_jax.model import fpn
from maskrcnn_jax.model import resnet
from tests.conftest import FIXTURES
from tests.tools import seeded_weights

# torchvision resnet{depth}(): all parameters, the fc layer included.
TORCHVISION_PARAMETERS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160}


@pytest.fixture(scope='module')
def recorded():
  data = np.load(FIXTURES / 'torchvision_backbone.npz')
  names_and_shapes = [(str(name), tuple(int(s) for s in shape if s))
                      for name, shape in zip(data['names'], data['shapes'])]
  state_dict = seeded_weights.seeded_state_dict(names_and_shapes, int(data['seed']))
  return data, state_dict


def _shapes(tree):
  return jax.tree.map(lambda a: tuple(a.shape), tree)


def test_backbone_matches_recorded_torchvision(recorded):
  data, state_dict = recorded
  images = data['images']
  backbone = resnet.ResNet(depth=50, frozen_bn_eps=float(data['frozen_bn_eps']))
  pyramid = fpn.FPN(channels=256)
  backbone_variables = torchvision_weights.convert_resnet(state_dict, 'backbone.body.')
  fpn_variables = torchvision_weights.convert_fpn(state_dict, 'backbone.fpn.')

  def init():
    features, backbone_init = backbone.init_with_output(jax.random.PRNGKey(0), images)
    return backbone_init, pyramid.init(jax.random.PRNGKey(0), features)

  backbone_init, fpn_init = jax.eval_shape(init)
  assert _shapes(backbone_variables) == _shapes(backbone_init)
  assert _shapes(fpn_variables) == _shapes(fpn_init)

  @jax.jit
  def forward(backbone_variables, fpn_variables, images):
    features = backbone.apply(backbone_variables, images)
    return {**features, **pyramid.apply(fpn_variables, features)}

  outputs = forward(backbone_variables, fpn_variables, images)
  for key in ('c2', 'c3', 'c4', 'c5', 'p2', 'p3', 'p4', 'p5', 'p6'):
    expected = data[key]  # torchvision in float64, a strided subset of channels
    ours = np.asarray(outputs[key])[..., data[f'channels_{key}']]
    assert ours.shape == expected.shape, key
    error = np.abs(ours - expected).max() / np.abs(expected).max()
    assert error < 1e-4, (key, error)


def _torchvision_resnet_keys(depth):
  """(key, shape) of torchvision's resnet{depth}() state dict, from its definition."""
  blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
  bottleneck = depth >= 50
  expansion = 4 if bottleneck else 1
  batch_norm = lambda name, c: [(f'{name}.{t}', (c,))
                                for t in ('weight', 'bias', 'running_mean', 'running_var')]
  keys = [('conv1.weight', (64, 3, 7, 7))] + batch_norm('bn1', 64)
  channels = 64
  for stage, num_blocks in enumerate(blocks):
    width = 64 * 2**stage
    for b in range(num_blocks):
      name = f'layer{stage + 1}.{b}'
      if bottleneck:
        convs = [(width, channels, 1, 1), (width, width, 3, 3), (4 * width, width, 1, 1)]
      else:
        convs = [(width, channels, 3, 3), (width, width, 3, 3)]
      for k, shape in enumerate(convs, 1):
        keys += [(f'{name}.conv{k}.weight', shape)] + batch_norm(f'{name}.bn{k}', shape[0])
      if b == 0 and (stage > 0 or channels != width * expansion):
        keys += [(f'{name}.downsample.0.weight', (width * expansion, channels, 1, 1))]
        keys += batch_norm(f'{name}.downsample.1', width * expansion)
      channels = width * expansion
  return keys + [('fc.weight', (1000, channels)), ('fc.bias', (1000,))]


@pytest.mark.parametrize('depth', [18, 34, 50, 101])
def test_from_torchvision_resnet_builds_the_backbone_tree(depth):
  keys = _torchvision_resnet_keys(depth)
  trained = [(k, s) for k, s in keys if 'running' not in k]
  assert sum(np.prod(s) for _, s in trained) == TORCHVISION_PARAMETERS[depth]
  state_dict = seeded_weights.seeded_state_dict(keys, seed=depth)
  state_dict.update({k.replace('running_var', 'num_batches_tracked'): np.array(7)
                     for k in state_dict if k.endswith('running_var')})
  variables = convert.from_torchvision_resnet(state_dict)
  expected = jax.eval_shape(resnet.ResNet(depth=depth).init, jax.random.PRNGKey(0),
                            np.zeros((1, 32, 32, 3), np.float32))
  assert _shapes(variables) == _shapes(expected)
  np.testing.assert_array_equal(variables['params']['stem']['conv1']['kernel'][2, 5, 1],
                                state_dict['conv1.weight'][:, 1, 2, 5])
  np.testing.assert_array_equal(variables['batch_stats']['res5']['block0']['bn2']['var'],
                                state_dict['layer4.0.bn2.running_var'])


def test_imagenet_and_detection_body_conversions_agree(recorded):
  _, state_dict = recorded
  prefix = 'backbone.body.'
  imagenet = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  imagenet.update({'fc.weight': np.zeros((1000, 2048), np.float32),
                   'fc.bias': np.zeros(1000, np.float32)})
  ours = convert.from_torchvision_resnet(imagenet)
  reference = torchvision_weights.convert_resnet(state_dict, prefix)
  jax.tree.map(np.testing.assert_array_equal, ours, reference)


def test_missing_and_unexpected_keys_are_named(recorded):
  _, state_dict = recorded
  broken = dict(state_dict)
  del broken['backbone.fpn.layer_blocks.2.0.bias']
  broken['backbone.fpn.extra_blocks.0.weight'] = np.zeros(3, np.float32)
  with pytest.raises(KeyError, match=r'backbone\.fpn\.layer_blocks\.2\.0\.bias.*'
                                     r'backbone\.fpn\.extra_blocks\.0\.weight'):
    torchvision_weights.convert_fpn(broken, 'backbone.fpn.')
  del broken['backbone.body.layer3.0.bn2.running_mean']
  with pytest.raises(KeyError, match=r'backbone\.body\.layer3\.0\.bn2\.running_mean'):
    torchvision_weights.convert_resnet(broken, 'backbone.body.')


def test_load_torch_state_dict_without_torch_says_how_to_install(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'torch', None)  # makes `import torch` fail
  with pytest.raises(ImportError, match='pip install torch'):
    convert.load_torch_state_dict(str(tmp_path / 'weights.pth'))
