"""ResNet body: shapes, torchvision's parameter counts, frozen BN, freezing, bfloat16.

Numerical agreement with torchvision's ResNet-50 is checked in tests/convert/test_torchvision_weights.py.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.model import resnet

# torchvision resnet{depth}(): all parameters minus the 1000-way fc layer.
TORCHVISION_BODY_PARAMETERS = {
    18: 11_689_512 - 513_000,
    34: 21_797_672 - 513_000,
    50: 25_557_032 - 2_049_000,
    101: 44_549_160 - 2_049_000,
}


def _images(height, width, seed=0):
  return np.random.default_rng(seed).standard_normal((2, height, width, 3)).astype(np.float32)


@functools.cache
def _resnet18_variables(norm):
  """Initial ResNet-18 variables (they do not depend on the image size or freeze_at)."""
  model = resnet.ResNet(depth=18, norm=norm, group_norm_groups=8)
  return jax.jit(model.init)(jax.random.PRNGKey(0), _images(32, 32))


@pytest.mark.parametrize('depth', [18, 34, 50, 101])
def test_output_shapes_and_parameter_count(depth):
  model = resnet.ResNet(depth=depth)
  height, width = 97, 130  # odd sizes: every stride-2 layer gives ceil(n / 2)
  outputs, variables = jax.eval_shape(model.init_with_output, jax.random.PRNGKey(0),
                                      _images(height, width))
  expansion = 4 if depth >= 50 else 1
  for level in (2, 3, 4, 5):
    assert outputs[f'c{level}'].shape == (2, math.ceil(height / 2**level),
                                          math.ceil(width / 2**level),
                                          64 * 2**(level - 2) * expansion)
    assert outputs[f'c{level}'].dtype == jnp.float32
  assert set(variables['params']) == {'stem', 'res2', 'res3', 'res4', 'res5'}
  blocks = resnet.STAGE_BLOCKS[depth]
  assert [len(variables['params'][f'res{s}']) for s in (2, 3, 4, 5)] == list(blocks)
  # torchvision counts conv weights and batch norm weight/bias, not running statistics.
  stats = jax.tree_util.tree_flatten_with_path(variables['batch_stats'])[0]
  count = sum(p.size for p in jax.tree.leaves(variables['params']))
  count += sum(s.size for path, s in stats if path[-1].key in ('scale', 'bias'))
  assert count == TORCHVISION_BODY_PARAMETERS[depth]


def test_parameter_names_and_collections():
  variables = jax.eval_shape(resnet.ResNet(depth=50).init, jax.random.PRNGKey(0),
                             _images(64, 64))
  params, stats = variables['params'], variables['batch_stats']
  assert params['stem']['conv1']['kernel'].shape == (7, 7, 3, 64)
  block = params['res3']['block0']
  assert set(block) == {'conv1', 'conv2', 'conv3', 'downsample_conv'}
  assert block['conv2']['kernel'].shape == (3, 3, 128, 128)
  assert block['downsample_conv']['kernel'].shape == (1, 1, 256, 512)
  assert set(params['res3']['block1']) == {'conv1', 'conv2', 'conv3'}
  assert set(stats['res3']['block0']) == {'bn1', 'bn2', 'bn3', 'downsample_bn'}
  assert set(stats['stem']['bn1']) == {'scale', 'bias', 'mean', 'var'}
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))


def test_frozen_batch_norm_is_the_affine_of_its_statistics():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 3, 5)).astype(np.float32)
  stats = {k: rng.uniform(0.5, 2.0, 5).astype(np.float32)
           for k in ('scale', 'bias', 'mean', 'var')}
  out = resnet.FrozenBatchNorm(epsilon=0.1).apply({'batch_stats': stats}, x)
  expected = (x - stats['mean']) / np.sqrt(stats['var'] + 0.1) * stats['scale'] + stats['bias']
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('stride_in_1x1', [False, True])
def test_bottleneck_stride_placement(stride_in_1x1):
  model = resnet.ResNet(depth=50, stride_in_1x1=stride_in_1x1)
  images = _images(64, 64)

  def intermediates():
    variables = model.init(jax.random.PRNGKey(0), images)
    _, state = model.apply(variables, images, capture_intermediates=True,
                           mutable=['intermediates'])
    return state['intermediates']['res3']['block0']

  block = jax.eval_shape(intermediates)
  conv1_size = 8 if stride_in_1x1 else 16  # res3 input is 16x16
  assert block['conv1']['__call__'][0].shape == (2, conv1_size, conv1_size, 128)
  assert block['conv2']['__call__'][0].shape == (2, 8, 8, 128)


@pytest.mark.parametrize('norm, freeze_at', [('frozen_bn', 0), ('frozen_bn', 2),
                                             ('group_norm', 3)])
@pytest.mark.slow
def test_freeze_at_stops_gradients_of_frozen_stages(norm, freeze_at):
  model = resnet.ResNet(depth=18, norm=norm, group_norm_groups=8, freeze_at=freeze_at)
  images = _images(32, 32)
  variables = _resnet18_variables(norm)
  if norm == 'group_norm':
    assert 'batch_stats' not in variables
    assert set(variables['params']['res3']['block0']['bn1']) == {'scale', 'bias'}

  def loss(params):
    outputs = model.apply({**variables, 'params': params}, images)
    return sum(jnp.mean(jnp.square(c)) for c in outputs.values())

  grads = jax.jit(jax.grad(loss))(variables['params'])
  for index, stage in enumerate(('stem', 'res2', 'res3', 'res4', 'res5')):
    norms = [float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[stage])]
    if index < freeze_at:
      assert max(norms) == 0.0, stage
    else:
      assert min(norms) > 0.0, stage


@pytest.mark.slow
def test_bfloat16_compute_is_close_to_float32():
  images = _images(64, 64)
  variables = _resnet18_variables('frozen_bn')
  out32 = jax.jit(resnet.ResNet(depth=18, freeze_at=0).apply)(variables, images)
  out16 = jax.jit(resnet.ResNet(depth=18, freeze_at=0, dtype='bfloat16').apply)(variables,
                                                                                images)
  for key, ref in out32.items():
    assert out16[key].dtype == jnp.bfloat16
    error = np.abs(np.asarray(out16[key], np.float32) - ref).max() / np.abs(ref).max()
    assert error < 0.03, (key, error)


@pytest.mark.parametrize('kwargs, match', [({'depth': 152}, 'depth'),
                                           ({'norm': 'batch_norm'}, 'norm'),
                                           ({'freeze_at': 6}, 'freeze_at')])
def test_invalid_settings_are_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(resnet.ResNet(**kwargs).init, jax.random.PRNGKey(0), _images(32, 32))
