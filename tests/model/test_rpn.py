"""RPN head and proposal selection vs a NumPy transcription of torchvision's RPN."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.model import rpn
from tests import numpy_reference

CLAMP = math.log(1000.0 / 16)


def _np_filter_proposals(objectness, deltas, anchors, image_hw, pre_nms_topk, post_nms_topk,
                         nms_threshold, min_size):
  """torchvision RegionProposalNetwork.filter_proposals for one image (logit scores)."""
  boxes, scores, levels = [], [], []
  for level, (logits, level_deltas, level_anchors) in enumerate(
      zip(objectness, deltas, anchors)):
    top = np.argsort(-logits, kind='stable')[:min(pre_nms_topk, len(logits))]
    boxes.append(numpy_reference.decode_boxes(level_deltas[top], level_anchors[top]))
    scores.append(logits[top])
    levels.append(np.full(len(top), level))
  boxes, scores, levels = map(np.concatenate, (boxes, scores, levels))
  height, width = image_hw
  boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
  boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
  keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
  boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
  keep = numpy_reference.greedy_nms(boxes, scores, nms_threshold, classes=levels)[:post_nms_topk]
  return boxes[keep], scores[keep]


def _random_anchors(rng, num, image_size):
  centers = rng.uniform(0, image_size, (num, 2))
  sizes = rng.uniform(2, image_size / 2, (num, 2))
  sizes[:5] = 0.3  # tiny anchors, removed by min_size
  return np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1).astype(np.float32)


@pytest.mark.parametrize('post_nms_topk', [12, 60])
def test_select_proposals_matches_torchvision_reference(post_nms_topk):
  rng = np.random.default_rng(0)
  batch, level_sizes, pre_nms_topk, min_size = 2, (48, 20, 3), 16, 1.0
  anchors = [_random_anchors(rng, n, 64) for n in level_sizes]
  objectness = [rng.normal(size=(batch, n)).astype(np.float32) for n in level_sizes]
  deltas = [rng.normal(scale=0.3, size=(batch, n, 4)).astype(np.float32) for n in level_sizes]
  deltas[0][0, :4, 2:] = 9.0  # beyond the clamp
  image_info = np.array([[64, 64, 1, 0], [40, 52, 1, 0]], np.float32)

  select = jax.jit(lambda o, d, info: rpn.select_proposals(
      o, d, anchors, info, pre_nms_topk=pre_nms_topk, post_nms_topk=post_nms_topk,
      nms_threshold=0.7, min_box_size=min_size, weights=(1.0, 1.0, 1.0, 1.0), clamp=CLAMP))
  proposals, valid, scores = jax.device_get(select(objectness, deltas, image_info))

  assert proposals.shape == (batch, post_nms_topk, 4)
  assert valid.shape == scores.shape == (batch, post_nms_topk)
  for b in range(batch):
    ref_boxes, ref_scores = _np_filter_proposals(
        [o[b] for o in objectness], [d[b] for d in deltas], anchors, image_info[b, :2],
        pre_nms_topk, post_nms_topk, 0.7, min_size)
    n = len(ref_scores)
    assert 0 < n <= post_nms_topk
    np.testing.assert_array_equal(valid[b], np.arange(post_nms_topk) < n)
    np.testing.assert_allclose(proposals[b, :n], ref_boxes, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(scores[b, :n], ref_scores, rtol=1e-6)
    assert np.all(proposals[b, n:] == 0) and np.all(scores[b, n:] == 0)


def test_head_shapes_sharing_and_channel_order():
  num_anchors, channels, batch = 3, 8, 2
  sizes = ((8, 6), (4, 3), (2, 2))
  rng = np.random.default_rng(1)
  features = [jnp.asarray(rng.normal(size=(batch, h, w, channels)), jnp.float32)
              for h, w in sizes]
  head = rpn.RPNHead(num_anchors=num_anchors)
  variables = head.init(jax.random.PRNGKey(0), features)
  params = variables['params']
  assert set(params) == {'conv', 'cls_logits', 'bbox_pred'}  # one set for all levels
  assert params['conv']['kernel'].shape == (3, 3, channels, channels)
  assert params['cls_logits']['kernel'].shape == (1, 1, channels, num_anchors)
  assert params['bbox_pred']['kernel'].shape == (1, 1, channels, num_anchors * 4)

  objectness, deltas = head.apply(variables, features)
  for (h, w), o, d, x in zip(sizes, objectness, deltas, features):
    assert o.shape == (batch, h * w * num_anchors) and o.dtype == jnp.float32
    assert d.shape == (batch, h * w * num_anchors, 4) and d.dtype == jnp.float32
    # Raw per-location outputs: index (y * W + x) * A + a holds anchor a at (y, x) and
    # deltas channel 4 * a + j, as torchvision's permute_and_flatten.
    t = jax.nn.relu(jax.lax.conv_general_dilated(
        x, params['conv']['kernel'], (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + params['conv']['bias'])
    raw_cls = t @ params['cls_logits']['kernel'][0, 0] + params['cls_logits']['bias']
    raw_box = t @ params['bbox_pred']['kernel'][0, 0] + params['bbox_pred']['bias']
    y, xx, a = h - 1, w - 2, 1
    index = (y * w + xx) * num_anchors + a
    np.testing.assert_allclose(o[:, index], raw_cls[:, y, xx, a], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d[:, index], raw_box[:, y, xx, 4 * a:4 * a + 4],
                               rtol=1e-5, atol=1e-6)
