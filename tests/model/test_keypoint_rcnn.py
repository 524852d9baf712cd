"""Keypoint R-CNN against torchvision's keypointrcnn_resnet50_fpn with the same weights.

tests/tools/record_torchvision_keypointrcnn.py ran torchvision on three images with
seeded NumPy weights and stored inputs and outputs (not the weights). Here the weights
are rebuilt, converted with `convert.from_torchvision`, and the Predictor must give the
same boxes and keypoints; torchvision's `heatmaps_to_keypoints` on recorded heatmaps is
compared alone, and the keypoint head's training loss against a NumPy definition.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax import convert
from maskrcnn_jax.inference import keypoint_decoding
from maskrcnn_jax.inference.predictor import Predictor
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.model import poolers
from maskrcnn_jax.ops import keypoints as keypoint_ops
from tests import numpy_reference
from tests.conftest import FIXTURES
from tests.conftest import load_config
from tests.tools import record_torchvision_keypointrcnn as recorder

NUM_IMAGES = 3


def _config(recorded):
  config = load_config('torchvision_keypoint_r50_fpn')
  config.data.min_size = int(recorded['min_size'])  # the recording's smaller images
  config.data.max_size = int(recorded['max_size'])
  config.model.roi_heads.detections_per_image = int(recorded['detections_per_image'])
  return config


@pytest.fixture(scope='module')
def recorded():
  return dict(np.load(FIXTURES / 'torchvision_keypointrcnn.npz'))


@pytest.fixture(scope='module')
def state_dict(recorded):
  names_and_shapes = [(str(n), tuple(int(d) for d in s if d > 0))
                      for n, s in zip(recorded['names'], recorded['shapes'])]
  assert int(recorded['seed']) == recorder.SEED
  return recorder.seeded_keypointrcnn(names_and_shapes)


def test_conversion_fills_exactly_the_model_variables(recorded, state_dict):
  model = mask_rcnn.MaskRCNN(_config(recorded).model)
  expected = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32),
                            jax.ShapeDtypeStruct((1, 5), np.float32))
  converted = convert.from_torchvision(state_dict)
  shapes = lambda tree: jax.tree_util.tree_map_with_path(
      lambda path, x: (jax.tree_util.keystr(path), x.shape), tree)
  assert jax.tree.leaves(shapes(converted)) == jax.tree.leaves(shapes(expected))
  assert 'mask_head' not in converted['params']


def test_conversion_names_a_missing_keypoint_key(state_dict):
  without = {k: v for k, v in state_dict.items()
             if k != 'roi_heads.keypoint_head.14.bias'}
  with pytest.raises(KeyError, match=r'missing keys \[.roi_heads.keypoint_head.14.bias.\]'):
    convert.from_torchvision(without)


def test_heatmaps_to_keypoints_as_torchvision(recorded):
  keypoints, scores = keypoint_decoding.heatmaps_to_keypoints(recorded['heatmaps_0'],
                                                              recorded['heatmap_boxes_0'])
  np.testing.assert_allclose(keypoints, recorded['resized_keypoints_0'], atol=1e-3, rtol=0)
  np.testing.assert_allclose(scores, recorded['resized_keypoint_scores_0'], atol=1e-4,
                             rtol=1e-5)


@pytest.fixture(scope='module')
def predictor(recorded, state_dict):
  return Predictor(_config(recorded), convert.from_torchvision(state_dict))


@pytest.fixture(scope='module')
def detections(predictor, recorded):
  return [predictor(recorded[f'image_{i}']) for i in range(NUM_IMAGES)]



@pytest.mark.slow
@pytest.mark.parametrize('index', range(NUM_IMAGES))
def test_same_boxes_and_keypoints_as_torchvision(detections, recorded, index):
  ours = detections[index]
  boxes = recorded[f'boxes_{index}']
  assert 'masks' not in ours
  assert len(ours['boxes']) == len(boxes)
  match = numpy_reference.match_boxes(ours['boxes'], boxes, atol=0.05)
  np.testing.assert_allclose(ours['scores'][match], recorded[f'scores_{index}'], atol=1e-4,
                             rtol=0)
  keypoints = ours['keypoints'][match]
  assert keypoints.shape == recorded[f'keypoints_{index}'].shape == (len(boxes), 17, 3)
  error = np.abs(keypoints[..., :2] - recorded[f'keypoints_{index}'][..., :2]).max(-1)
  scores, reference_scores = ours['keypoint_scores'][match], recorded[f'keypoint_scores_{index}']
  # Random weights give heatmaps with distant near-equal maxima; a keypoint more than 1 px
  # away must be such a tie (the same maximum, to float32 rounding of the resize).
  far = error > 1.0
  np.testing.assert_allclose(scores[far], reference_scores[far], atol=1e-3, rtol=1e-4)
  assert np.mean(far) <= 0.02, f'{np.sum(far)} keypoints more than 1 px away'
  assert np.mean(error < 1e-3) > 0.95, 'most keypoints land on the same pixel'
  np.testing.assert_array_equal(keypoints[..., 2], recorded[f'keypoints_{index}'][..., 2])
  np.testing.assert_allclose(scores, reference_scores, atol=1e-3, rtol=1e-4)


def _numpy_keypoint_loss(logits, keypoints, rois, heatmap_size):
  """Cross-entropy over the cells, mean over the visible in-RoI keypoints, from the definition."""
  total, count = 0.0, 0
  for roi_logits, roi_keypoints, (x1, y1, x2, y2) in zip(logits, keypoints, rois):
    for k, (x, y, v) in enumerate(roi_keypoints):
      col = heatmap_size - 1 if x == x2 else int(np.floor((x - x1) * heatmap_size / (x2 - x1)))
      row = heatmap_size - 1 if y == y2 else int(np.floor((y - y1) * heatmap_size / (y2 - y1)))
      if v <= 0 or not (0 <= col < heatmap_size and 0 <= row < heatmap_size):
        continue
      cells = roi_logits[..., k].astype(np.float64).reshape(-1)
      log_z = np.log(np.sum(np.exp(cells - cells.max()))) + cells.max()
      total += log_z - cells[row * heatmap_size + col]
      count += 1
  return total / max(count, 1)


def test_keypoint_loss_matches_the_definition():
  rng = np.random.default_rng(0)
  size, num_rois, k = 8, 5, 4
  rois = np.array([[0, 0, 16, 16], [4, 2, 12, 30], [10, 10, 11, 12], [3, 3, 9, 9],
                   [0, 0, 32, 8]], np.float32)
  keypoints = np.stack([rng.uniform(-2, 34, (num_rois, k)), rng.uniform(-2, 34, (num_rois, k)),
                        rng.integers(0, 3, (num_rois, k))], axis=-1).astype(np.float32)
  keypoints[0, 0, :2] = rois[0, 2:]  # on the far corner: the last row and column
  keypoints[0, 0, 2] = 2
  logits = rng.normal(size=(num_rois, size, size, k)).astype(np.float32) * 3
  cells, valid = keypoint_ops.keypoint_targets(jnp.asarray(keypoints), jnp.asarray(rois), size)
  assert bool(valid[0, 0]) and int(cells[0, 0]) == size * size - 1
  loss = keypoint_ops.keypoint_loss(jnp.asarray(logits), cells, valid)
  np.testing.assert_allclose(float(loss), _numpy_keypoint_loss(logits, keypoints, rois, size),
                             rtol=1e-5)
  fixed = keypoint_ops.keypoint_loss(jnp.asarray(logits), cells, valid, normalizer=40.0)
  np.testing.assert_allclose(float(fixed) * 40.0, float(loss) * int(valid.sum()), rtol=1e-5)


@pytest.mark.slow
def test_mask_and_keypoint_heads_pool_once_with_the_same_result(monkeypatch):
  """With both heads at 14 x 14 the RoI features are pooled once and shared: the same
  losses and detections as each head pooling on its own, gradients within float error
  (one scatter-add of the summed cotangents instead of two)."""
  from maskrcnn_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  from maskrcnn_jax.data import examples  # pylint: disable=import-outside-toplevel
  config = load_config('shapes_keypoint_demo')
  config.train.batch_size = 2
  model = mask_rcnn.MaskRCNN(config.model)
  variables = step_lib.init_variables(model, tuple(config.data.image_size), jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = examples.empty_batch(2, config.data)
  batch['images'][:] = rng.integers(0, 256, batch['images'].shape)
  batch['image_info'][:] = [128, 128, 1.0, 0.0, 0.0]  # height, width, scale, no flip or transpose
  corners = rng.uniform(0, 64, (2, 3, 2))
  batch['gt_boxes'][:, :3] = np.concatenate([corners, corners + rng.uniform(16, 60, (2, 3, 2))],
                                            -1)
  batch['gt_classes'][:, :3] = rng.integers(1, 5, (2, 3))
  batch['gt_masks'][:, :3] = 1
  low, high = batch['gt_boxes'][:, :3, None, :2], batch['gt_boxes'][:, :3, None, 2:]
  batch['gt_keypoints'][:, :3, :, :2] = low + rng.uniform(0, 1, (2, 3, 4, 2)) * (high - low)
  batch['gt_keypoints'][:, :3, :, 2] = 2
  key = jax.random.key(1)

  def losses_and_grads(params):
    def total(p):
      terms = model.apply({**variables, 'params': p}, batch, key, method=model.losses)
      return terms['total'], terms
    return jax.grad(total, has_aux=True)(params)

  def run():
    grads, terms = jax.jit(losses_and_grads)(variables['params'])
    detections = jax.jit(model.apply)(variables, batch['images'], batch['image_info'])
    return grads, terms, detections

  grads, terms, detections = run()
  # Poolers equal only to themselves: each head pools on its own.
  monkeypatch.setattr(poolers.RoIPooler, '__eq__', lambda self, other: self is other)
  own_grads, own_terms, own_detections = run()
  for name in ('mask', 'keypoint', 'total'):
    np.testing.assert_array_equal(terms[name], own_terms[name], err_msg=name)
  assert float(terms['keypoint']) > 0
  for name in ('boxes', 'masks', 'keypoint_heatmaps'):
    np.testing.assert_array_equal(detections[name], own_detections[name], err_msg=name)
  flat, own_flat = jax.tree.leaves(grads), jax.tree.leaves(own_grads)
  for g, h in zip(flat, own_flat):
    np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-6)
