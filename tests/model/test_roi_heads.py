"""Box and mask heads: shapes, parameter names and torchvision's layer math in NumPy."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.model import poolers
from maskrcnn_jax.model import roi_heads

BATCH, NUM_ROIS, CHANNELS, NUM_CLASSES = 2, 3, 4, 3


def _features_and_boxes(seed=0):
  """FPN levels P2..P5 of a 64 x 64 image and RoIs of various sizes."""
  rng = np.random.default_rng(seed)
  features = [jnp.asarray(rng.normal(size=(BATCH, 64 >> l, 64 >> l, CHANNELS)), jnp.float32)
              for l in range(2, 6)]
  corners = rng.uniform(0, 30, (BATCH, NUM_ROIS, 2))
  sizes = rng.uniform(4, 34, (BATCH, NUM_ROIS, 2))
  boxes = jnp.asarray(np.concatenate([corners, corners + sizes], -1), jnp.float32)
  return features, boxes


def _np_conv3x3(x, kernel, bias):
  """[N, H, W, I] x [3, 3, I, O] with padding 1, as torch Conv2d(padding=1)."""
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  height, width = x.shape[1:3]
  out = sum(padded[:, i:i + height, j:j + width] @ kernel[i, j]
            for i in range(3) for j in range(3))
  return out + bias


def _np_conv_transpose2x2(x, torch_weight, bias):
  """torch ConvTranspose2d(kernel 2, stride 2): out[2i + a, 2j + b] = x[i, j] @ w[:, :, a, b]."""
  n, height, width, _ = x.shape
  out = np.zeros((n, 2 * height, 2 * width, torch_weight.shape[1]))
  for a in range(2):
    for b in range(2):
      out[:, a::2, b::2] = x @ torch_weight[:, :, a, b]
  return out + bias


@pytest.mark.parametrize('roi_op', ['align', 'pool'])
def test_box_head_matches_torchvision_layers(roi_op):
  features, boxes = _features_and_boxes()
  pooled = poolers.RoIPooler(7, op=roi_op)(features, boxes)
  head = roi_heads.BoxHead(num_classes=NUM_CLASSES, fc_dim=16)
  variables = head.init(jax.random.PRNGKey(0), pooled)
  params = jax.tree.map(np.asarray, variables['params'])
  assert set(params) == {'fc6', 'fc7', 'cls_score', 'bbox_pred'}
  assert params['fc6']['kernel'].shape == (CHANNELS * 7 * 7, 16)
  class_logits, box_deltas = head.apply(variables, pooled)
  assert class_logits.shape == (BATCH, NUM_ROIS, NUM_CLASSES + 1)
  assert box_deltas.shape == (BATCH, NUM_ROIS, NUM_CLASSES + 1, 4)

  # torchvision: NCHW features flattened (C, H, W), fc6 -> relu -> fc7 -> relu -> predictor.
  x = np.asarray(pooled).transpose(0, 1, 4, 2, 3).reshape(BATCH, NUM_ROIS, -1)
  x = np.maximum(x @ params['fc6']['kernel'] + params['fc6']['bias'], 0)
  x = np.maximum(x @ params['fc7']['kernel'] + params['fc7']['bias'], 0)
  logits = x @ params['cls_score']['kernel'] + params['cls_score']['bias']
  deltas = x @ params['bbox_pred']['kernel'] + params['bbox_pred']['bias']
  np.testing.assert_allclose(class_logits, logits, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(box_deltas, deltas.reshape(BATCH, NUM_ROIS, -1, 4),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('class_agnostic', [False, True])
def test_mask_head_matches_torchvision_layers(class_agnostic):
  features, boxes = _features_and_boxes(1)
  pooled = poolers.RoIPooler(14)(features, boxes)
  head = roi_heads.MaskHead(num_classes=NUM_CLASSES, conv_dim=6, num_convs=2,
                            class_agnostic=class_agnostic)
  variables = head.init(jax.random.PRNGKey(0), pooled)
  params = jax.tree.map(np.asarray, variables['params'])
  assert set(params) == {'mask_fcn1', 'mask_fcn2', 'conv5_mask', 'mask_fcn_logits'}
  mask_logits = head.apply(variables, pooled)
  channels = 1 if class_agnostic else NUM_CLASSES + 1
  assert mask_logits.shape == (BATCH, NUM_ROIS, 28, 28, channels)

  x = np.asarray(pooled).reshape(BATCH * NUM_ROIS, 14, 14, CHANNELS)
  for name in ('mask_fcn1', 'mask_fcn2'):
    x = np.maximum(_np_conv3x3(x, params[name]['kernel'], params[name]['bias']), 0)
  # The documented conversion rule for conv5_mask, inverted: torch weight [in, out, kh, kw].
  torch_weight = params['conv5_mask']['kernel'][::-1, ::-1].transpose(2, 3, 0, 1)
  x = np.maximum(_np_conv_transpose2x2(x, torch_weight, params['conv5_mask']['bias']), 0)
  x = x @ params['mask_fcn_logits']['kernel'][0, 0] + params['mask_fcn_logits']['bias']
  np.testing.assert_allclose(mask_logits, x.reshape(BATCH, NUM_ROIS, 28, 28, channels),
                             rtol=1e-4, atol=1e-5)


def test_upsample2x_equals_flax_conv_transpose_and_its_gradient():
  x = jax.random.normal(jax.random.key(0), (3, 5, 4, 6))
  ours = roi_heads.Upsample2x(7)
  flax_layer = nn.ConvTranspose(7, (2, 2), strides=(2, 2), padding='VALID')
  variables = ours.init(jax.random.key(1), x)
  assert jax.tree.map(np.shape, variables) == jax.tree.map(
      np.shape, flax_layer.init(jax.random.key(1), x))
  np.testing.assert_allclose(ours.apply(variables, x), flax_layer.apply(variables, x),
                             rtol=1e-5, atol=1e-5)
  loss = lambda layer: lambda v: jnp.sum(jnp.sin(layer.apply(v, x)))
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5),
               jax.grad(loss(ours))(variables), jax.grad(loss(flax_layer))(variables))
