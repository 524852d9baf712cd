"""The whole MaskRCNN on a tiny config: output contract, one compilation, ablations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.model import mask_rcnn
from tests.conftest import load_config

IMAGE_SIZE = 64
DETECTIONS = 10
IMAGE_INFO = np.array([[64, 64, 1.0, 0, 0], [40, 52, 0.5, 0, 0]], np.float32)


def _tiny_config(**overrides):
  """configs/tiny.py's `model` section, with small inference top-k."""
  m = load_config('tiny').model
  m.rpn.pre_nms_topk_test = 50
  m.rpn.post_nms_topk_test = 20
  m.roi_heads.detections_per_image = DETECTIONS
  for key, value in overrides.items():
    m[key] = value
  return m


NUM_CLASSES = _tiny_config().num_classes


def _images(seed):
  """Raw uint8 RGB, zero-padded outside each image's resized region (as the pipeline's)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (2, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
  for image, (height, width) in zip(images, IMAGE_INFO[:, :2].astype(int)):
    image[height:], image[:, width:] = 0, 0
  return images


def _check_outputs(out, image_info):
  out = jax.device_get(out)
  assert set(out) == {'boxes', 'scores', 'classes', 'masks', 'valid'}
  assert out['boxes'].shape == (2, DETECTIONS, 4) and out['boxes'].dtype == np.float32
  assert out['scores'].shape == (2, DETECTIONS) and out['scores'].dtype == np.float32
  assert out['classes'].shape == (2, DETECTIONS) and out['classes'].dtype == np.int32
  assert out['valid'].shape == (2, DETECTIONS) and out['valid'].dtype == bool
  assert out['masks'].shape == (2, DETECTIONS, 28, 28)
  assert out['valid'].any()
  for b in range(2):
    valid = out['valid'][b]
    n = valid.sum()
    assert valid[:n].all()  # valid entries first
    boxes, scores = out['boxes'][b, :n], out['scores'][b, :n]
    height, width = image_info[b, :2]
    assert np.all(boxes >= 0) and np.all(boxes[:, [0, 2]] <= width)
    assert np.all(boxes[:, [1, 3]] <= height)
    assert np.all(np.diff(scores) <= 0) and np.all(scores > 0.05)
    assert np.all((out['classes'][b, :n] >= 1) & (out['classes'][b, :n] <= NUM_CLASSES))
  masks = out['masks'][out['valid']]
  assert np.all((masks >= 0) & (masks <= 1))


@pytest.mark.slow
def test_inference_compiles_once_and_meets_the_output_contract():
  model = mask_rcnn.MaskRCNN(_tiny_config())
  out, variables = jax.jit(model.init_with_output)(jax.random.PRNGKey(0), _images(0), IMAGE_INFO)
  _check_outputs(out, IMAGE_INFO)
  assert set(variables['params']) == {'backbone', 'fpn', 'rpn', 'box_head', 'mask_head'}
  forward = jax.jit(model.apply)
  _check_outputs(forward(variables, _images(1), IMAGE_INFO), IMAGE_INFO)
  flipped_info = IMAGE_INFO[::-1].copy()
  _check_outputs(forward(variables, _images(2), flipped_info), flipped_info)
  assert forward._cache_size() == 1  # pylint: disable=protected-access

  proposals = jax.eval_shape(lambda v, x, i: model.apply(v, x, i, method=model.propose),
                             variables, _images(1), IMAGE_INFO)
  assert set(proposals['features']) == {'p2', 'p3', 'p4', 'p5', 'p6'}
  assert proposals['features']['p2'].shape == (2, 16, 16, 16)
  assert proposals['features']['p6'].shape == (2, 1, 1, 16)
  assert [o.shape[1] for o in proposals['objectness']] == [768, 192, 48, 12, 3]
  assert proposals['proposals'].shape == (2, 20, 4)
  assert proposals['proposal_valid'].shape == proposals['proposal_scores'].shape == (2, 20)


@pytest.mark.parametrize('overrides', [
    {'roi_op': 'pool', 'class_agnostic_mask': True},
    {'dtype': 'bfloat16'},
], ids=['pool_class_agnostic', 'bfloat16'])
@pytest.mark.slow
def test_ablations_run(overrides):
  model = mask_rcnn.MaskRCNN(_tiny_config(**overrides))
  out, variables = jax.jit(model.init_with_output)(jax.random.PRNGKey(0), _images(0), IMAGE_INFO)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables['params']))
  _check_outputs(out, IMAGE_INFO)


def test_inconsistent_mask_resolution_is_an_error():
  config = _tiny_config()
  config.mask_head.resolution = 14
  model = mask_rcnn.MaskRCNN(config)
  with pytest.raises(ValueError, match='resolution'):
    model.init(jax.random.PRNGKey(0), _images(0), IMAGE_INFO)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_normalize_images_matches_the_host_definition(dtype):
  mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
  images = _images(3)
  out = jax.device_get(mask_rcnn.normalize_images(images, IMAGE_INFO, mean, std, dtype))
  assert out.dtype == dtype and out.shape == images.shape
  for b, (height, width) in enumerate(IMAGE_INFO[:, :2].astype(int)):
    # Today's host normalization: float32 (x - mean) / std on the resized pixels, 0 padding.
    expected = np.zeros(images.shape[1:], np.float32)
    expected[:height, :width] = (images[b, :height, :width].astype(np.float32)
                                 - np.array(mean, np.float32)) / np.array(std, np.float32)
    # XLA may divide by the constant std as a multiply by its reciprocal: 1 ulp apart.
    np.testing.assert_allclose(out[b].astype(np.float32), expected.astype(dtype).astype(
        np.float32), rtol=2e-7 if dtype == jnp.float32 else 1e-2, atol=0)
    assert not out[b, height:].astype(np.float32).any()
    assert not out[b, :, width:].astype(np.float32).any()
  # float32 raw pixels (the Predictor's torch-exact path) give the same numbers.
  as_float = mask_rcnn.normalize_images(images.astype(np.float32), IMAGE_INFO, mean, std, dtype)
  np.testing.assert_array_equal(jax.device_get(as_float), out)
