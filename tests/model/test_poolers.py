"""model/poolers.py: the pooler applies the config's op and settings; equal poolers pool once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.model import poolers
from maskrcnn_jax.ops import roi_align
from maskrcnn_jax.ops import roi_pool
from tests.conftest import load_config


def _features_and_boxes():
  rng = np.random.default_rng(0)
  features = [jnp.asarray(rng.normal(size=(2, 64 >> l, 64 >> l, 3)), jnp.float32)
              for l in range(2, 6)]
  corners = rng.uniform(0, 40, (2, 5, 2))
  boxes = np.concatenate([corners, corners + rng.uniform(2, 60, (2, 5, 2))], -1)
  return features, jnp.asarray(boxes, jnp.float32)


@pytest.mark.parametrize('roi_op', ['align', 'pool'])
def test_pooler_from_config_applies_its_op_and_settings(roi_op):
  model_config = load_config('tiny').model
  model_config.roi_op = roi_op
  model_config.roi_align.sampling_ratio, model_config.roi_align.aligned = 4, False
  model_config.roi_pool.max_bin_cells = 5
  pooler = poolers.RoIPooler.from_config(model_config, 7)
  features, boxes = _features_and_boxes()
  if roi_op == 'align':
    expected = roi_align.multilevel_roi_align(features, boxes, 7, 4, False)
  else:
    expected = roi_pool.multilevel_roi_pool(features, boxes, 7, 5)
  np.testing.assert_array_equal(pooler(features, boxes), expected)


def test_unknown_op_is_an_error_naming_the_key():
  with pytest.raises(ValueError, match="roi_op 'crop'"):
    poolers.RoIPooler(7, op='crop')


def test_mask_and_keypoint_heads_at_the_same_size_share_one_pooling():
  """Counted at trace time: 14 x 14 mask and keypoint poolers are equal, so inference pools
  twice (box head, then both heads once); a 7 x 7 keypoint pooler makes it three."""
  config = load_config('shapes_keypoint_demo')
  calls = []
  pool = poolers.RoIPooler.__call__

  def counting_pool(pooler, features, boxes):
    calls.append(pooler.output_size)
    return pool(pooler, features, boxes)

  images = jnp.zeros((1, 128, 128, 3), jnp.uint8)
  info = jnp.array([[128, 128, 1.0, 0.0, 0.0]], jnp.float32)
  poolers.RoIPooler.__call__ = counting_pool
  try:
    for keypoint_size in (14, 7):
      config.model.keypoint_head.pooled_size = keypoint_size
      config.model.keypoint_head.heatmap_size = 4 * keypoint_size
      calls.clear()
      jax.eval_shape(mask_rcnn.MaskRCNN(config.model).init, jax.random.key(0), images, info)
      assert sorted(calls) == sorted([7, 14] + ([] if keypoint_size == 14 else [7])), calls
  finally:
    poolers.RoIPooler.__call__ = pool
