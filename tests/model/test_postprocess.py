"""Detections vs a NumPy transcription of torchvision's postprocess_detections."""

import math

import jax
import numpy as np
import pytest

from maskrcnn_jax.model import postprocess
from tests import numpy_reference

CLAMP = math.log(1000.0 / 16)
WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def _np_postprocess(logits, deltas, proposals, image_hw, score_threshold, nms_threshold,
                    detections, candidates=None):
  """torchvision RoIHeads.postprocess_detections for one image, float64.

  logits: [R, K + 1]; deltas: [R, (K + 1) * 4]; proposals: [R, 4] (valid ones only).
  candidates: keep only the best this many (by score) before NMS; None keeps all.
  """
  num_rois, num_classes = logits.shape
  boxes = numpy_reference.decode_boxes(
      deltas.reshape(-1, 4), np.repeat(proposals, num_classes, axis=0), WEIGHTS, CLAMP
  ).reshape(num_rois, num_classes, 4)
  exp = np.exp(logits - logits.max(axis=1, keepdims=True))
  scores = exp / exp.sum(axis=1, keepdims=True)
  height, width = image_hw
  boxes[..., 0::2] = np.clip(boxes[..., 0::2], 0, width)
  boxes[..., 1::2] = np.clip(boxes[..., 1::2], 0, height)
  labels = np.broadcast_to(np.arange(num_classes), scores.shape)
  boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].ravel(), labels[:, 1:].ravel()
  keep = scores > score_threshold
  boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
  keep = ((boxes[:, 2] - boxes[:, 0]) >= 1e-2) & ((boxes[:, 3] - boxes[:, 1]) >= 1e-2)
  boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
  if candidates is not None:
    best = np.argsort(-scores, kind='stable')[:candidates]
    boxes, scores, labels = boxes[best], scores[best], labels[best]
  kept = numpy_reference.greedy_nms(boxes, scores, nms_threshold, classes=labels)
  kept = np.asarray(kept[:detections], np.int64)
  return boxes[kept], scores[kept], labels[kept]


def _random_inputs(rng, batch, num_rois, num_classes):
  centers = rng.uniform(0, 64, (batch, num_rois, 2))
  sizes = rng.uniform(4, 40, (batch, num_rois, 2))
  proposals = np.concatenate([centers - sizes / 2, centers + sizes / 2], -1).astype(np.float32)
  logits = rng.normal(scale=2.0, size=(batch, num_rois, num_classes + 1)).astype(np.float32)
  deltas = rng.normal(scale=1.0, size=(batch, num_rois, num_classes + 1, 4)).astype(np.float32)
  deltas[:, :3, :, 2:] = 60.0  # beyond the clamp
  deltas[:, 3:6, :, 2:] = -60.0  # collapse to (almost) empty boxes, removed as small
  proposal_valid = rng.uniform(size=(batch, num_rois)) > 0.2
  return logits, deltas, proposals, proposal_valid


@pytest.mark.parametrize('detections, candidates', [(8, 5000), (200, 5000), (8, 12)])
def test_detect_boxes_matches_torchvision_reference(detections, candidates):
  rng = np.random.default_rng(0)
  batch, num_rois, num_classes = 2, 24, 4
  logits, deltas, proposals, proposal_valid = _random_inputs(rng, batch, num_rois, num_classes)
  image_info = np.array([[64, 64, 1, 0], [45, 50, 1, 0]], np.float32)

  detect = jax.jit(lambda *args: postprocess.detect_boxes(
      *args, weights=WEIGHTS, clamp=CLAMP, score_threshold=0.05, nms_threshold=0.5,
      detections_per_image=detections, pre_nms_topk=candidates))
  out = jax.device_get(detect(logits, deltas, proposals, proposal_valid, image_info))

  assert out['boxes'].shape == (batch, detections, 4)
  for key in ('scores', 'classes', 'valid'):
    assert out[key].shape == (batch, detections)
  assert out['classes'].dtype == np.int32 and out['valid'].dtype == bool
  for b in range(batch):
    keep = proposal_valid[b]
    ref_boxes, ref_scores, ref_classes = _np_postprocess(
        logits[b, keep].astype(np.float64), deltas[b, keep].reshape(keep.sum(), -1),
        proposals[b, keep].astype(np.float64), image_info[b, :2], 0.05, 0.5, detections,
        candidates if candidates < 5000 else None)
    n = len(ref_scores)
    assert n > 0
    np.testing.assert_array_equal(out['valid'][b], np.arange(detections) < n)
    np.testing.assert_array_equal(out['classes'][b, :n], ref_classes)
    np.testing.assert_allclose(out['scores'][b, :n], ref_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out['boxes'][b, :n], ref_boxes, rtol=1e-5, atol=1e-4)
    assert np.all(out['boxes'][b, n:] == 0) and np.all(out['classes'][b, n:] == 0)
    assert np.all(out['scores'][b, n:] == 0)


def test_select_mask_probs_takes_the_class_channel():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(2, 3, 4, 4, 5)).astype(np.float32)
  classes = np.array([[1, 4, 0], [2, 2, 3]], np.int32)
  probs = np.asarray(postprocess.select_mask_probs(logits, classes))
  assert probs.shape == (2, 3, 4, 4)
  for b in range(2):
    for d in range(3):
      np.testing.assert_allclose(probs[b, d], 1 / (1 + np.exp(-logits[b, d, ..., classes[b, d]])),
                                 rtol=1e-6)
  agnostic = np.asarray(postprocess.select_mask_probs(logits[..., :1], classes))
  np.testing.assert_allclose(agnostic, 1 / (1 + np.exp(-logits[..., 0])), rtol=1e-6)


def test_select_mask_probs_softmax_normalizes_over_the_classes_of_each_pixel():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(1, 2, 3, 3, 4)).astype(np.float32)
  classes = np.array([[3, 1]], np.int32)
  probs = np.asarray(postprocess.select_mask_probs(logits, classes, mode='softmax'))
  for d in range(2):
    exp = np.exp(logits[0, d].astype(np.float64))
    np.testing.assert_allclose(probs[0, d], exp[..., classes[0, d]] / exp.sum(-1), rtol=1e-5)
  with pytest.raises(ValueError, match="'sigmoid' or 'softmax'"):
    postprocess.select_mask_probs(logits, classes, mode='softmaxx')
