"""FPN vs a NumPy transcription of torchvision's FeaturePyramidNetwork + LastLevelMaxPool.

The recorded torchvision ResNet-50 + FPN comparison is in tests/convert/test_torchvision_weights.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.model import fpn

# Odd sizes, each ceil(previous / 2): the top-down path must crop after upsampling.
SHAPES = {'c2': (2, 13, 10, 4), 'c3': (2, 7, 5, 6), 'c4': (2, 4, 3, 8), 'c5': (2, 2, 2, 10)}


def _features(seed=0):
  rng = np.random.default_rng(seed)
  return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def _conv(x, kernel, bias):
  """[N, H, W, I] x [k, k, I, O], stride 1, padding k // 2 (torch Conv2d), float64."""
  k = kernel.shape[0]
  p = k // 2
  x = np.pad(x.astype(np.float64), ((0, 0), (p, p), (p, p), (0, 0)))
  height, width = x.shape[1] - 2 * p, x.shape[2] - 2 * p
  out = np.zeros(x.shape[:1] + (height, width, kernel.shape[-1]))
  for i in range(k):
    for j in range(k):
      out += x[:, i:i + height, j:j + width] @ kernel[i, j].astype(np.float64)
  return out + bias


def _interpolate_nearest(x, height, width):
  """torch F.interpolate(size=..., mode='nearest'): source index floor(i * in / out)."""
  rows = np.floor(np.arange(height) * np.float32(x.shape[1] / height)).astype(int)
  cols = np.floor(np.arange(width) * np.float32(x.shape[2] / width)).astype(int)
  return x[:, rows][:, :, cols]


def _reference_fpn(params, features):
  """torchvision FeaturePyramidNetwork.forward with LastLevelMaxPool, NHWC."""
  last_inner = _conv(features['c5'], **params['lateral5'])
  results = {'p5': _conv(last_inner, **params['output5'])}
  for level in (4, 3, 2):
    lateral = _conv(features[f'c{level}'], **params[f'lateral{level}'])
    last_inner = lateral + _interpolate_nearest(last_inner, *lateral.shape[1:3])
    results[f'p{level}'] = _conv(last_inner, **params[f'output{level}'])
  # F.max_pool2d(kernel_size=1, stride=2, padding=0): out size floor((n - 1) / 2) + 1.
  p5 = results['p5']
  p6 = np.zeros((p5.shape[0], (p5.shape[1] - 1) // 2 + 1, (p5.shape[2] - 1) // 2 + 1,
                 p5.shape[3]))
  for i in range(p6.shape[1]):
    for j in range(p6.shape[2]):
      p6[:, i, j] = p5[:, 2 * i, 2 * j]
  results['p6'] = p6
  return results


def test_fpn_matches_torchvision_reference():
  features = _features()
  model = fpn.FPN(channels=8)
  variables = model.init(jax.random.PRNGKey(0), features)
  params = jax.tree.map(np.asarray, variables['params'])
  # Nonzero biases, so that a misplaced bias would show.
  rng = np.random.default_rng(1)
  for layer in params.values():
    layer['bias'] = rng.standard_normal(layer['bias'].shape).astype(np.float32)
  assert set(params) == {f'{kind}{l}' for kind in ('lateral', 'output') for l in (2, 3, 4, 5)}
  assert params['lateral3']['kernel'].shape == (1, 1, 6, 8)
  assert params['output3']['kernel'].shape == (3, 3, 8, 8)

  out = jax.jit(model.apply)({'params': params}, features)
  expected = _reference_fpn(params, features)
  assert list(out) == ['p2', 'p3', 'p4', 'p5', 'p6']
  assert out['p6'].shape == (2, 1, 1, 8)
  for key, value in expected.items():
    assert out[key].shape == value.shape[:3] + (8,)
    np.testing.assert_allclose(out[key], value, rtol=1e-5, atol=1e-5, err_msg=key)


@pytest.mark.parametrize('height, width', [(8, 6), (7, 5), (8, 5), (7, 6)])
def test_upsample_nearest_is_torch_interpolate(height, width):
  x = np.arange(2 * 4 * 3 * 2, dtype=np.float32).reshape(2, 4, 3, 2)
  np.testing.assert_array_equal(fpn.upsample_nearest(x, height, width),
                                _interpolate_nearest(x, height, width))


def test_upsample_nearest_rejects_other_sizes():
  with pytest.raises(ValueError, match='upsample'):
    fpn.upsample_nearest(np.zeros((1, 4, 3, 2), np.float32), 9, 6)


def test_bfloat16_compute_keeps_float32_params():
  features = _features()
  variables = fpn.FPN(channels=8).init(jax.random.PRNGKey(0), features)
  out32 = fpn.FPN(channels=8).apply(variables, features)
  out16 = fpn.FPN(channels=8, dtype='bfloat16').apply(variables, features)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  for key, ref in out32.items():
    assert out16[key].dtype == jnp.bfloat16
    error = np.abs(np.asarray(out16[key], np.float32) - ref).max() / np.abs(ref).max()
    assert error < 0.03, (key, error)
