"""Matching and sampled targets vs loop references written from torchvision's definitions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from maskrcnn_jax.model import targets
from tests import numpy_reference

# One compile per static configuration is much faster than op-by-op dispatch on CPU.
_STATIC = ('fg_iou', 'batch_size', 'positive_fraction', 'weights')
_rpn_targets = jax.jit(targets.rpn_targets, static_argnames=_STATIC + ('bg_iou',))
_roi_targets = jax.jit(targets.roi_targets, static_argnames=_STATIC)


def _np_iou(gt_boxes, boxes, gt_valid, box_valid):
  """[N, M] IoU, -1 where the gt or the box is invalid."""
  return np.array([[numpy_reference.box_iou(g, b) if gv and bv else -1.0
                    for b, bv in zip(boxes, box_valid)]
                   for g, gv in zip(gt_boxes, gt_valid)]).reshape(len(gt_boxes), len(boxes))


def _np_match(iou, fg, bg, allow_low_quality):
  """torchvision Matcher, one candidate at a time; ties in the argmax go to the first gt."""
  num_gt, num = iou.shape
  matched, labels = np.zeros(num, int), np.zeros(num, int)
  for m in range(num):
    best = max(iou[:, m])
    matched[m] = list(iou[:, m]).index(best)
    labels[m] = 1 if best >= fg else (0 if best < bg else -1)
  if allow_low_quality:
    for g in range(num_gt):
      best = max(iou[g])
      for m in range(num):
        if best > 0 and iou[g, m] == best:
          labels[m] = 1
  return matched, labels


def _np_match_with_crowd(gt_boxes, gt_valid, gt_is_crowd, boxes, box_valid, fg, bg,
                         allow_low_quality, crowd_threshold):
  """Match against non-crowd gt; background overlapping a crowd box becomes ignored."""
  iou = _np_iou(gt_boxes, boxes, gt_valid, box_valid)
  crowd_iou = np.where(gt_is_crowd[:, None], iou, -1.0)
  matched, labels = _np_match(np.where(gt_is_crowd[:, None], -1.0, iou), fg, bg,
                              allow_low_quality)
  for m in range(len(boxes)):
    if labels[m] == 0 and max(crowd_iou[:, m]) >= crowd_threshold:
      labels[m] = -1
  return matched, labels


def _np_encode(box, reference, weights):
  """Fast R-CNN box parametrization of `box` relative to `reference`, float64."""
  wx, wy, ww, wh = weights
  w, h = box[2] - box[0], box[3] - box[1]
  rw, rh = reference[2] - reference[0], reference[3] - reference[1]
  return [wx * (box[0] + 0.5 * w - reference[0] - 0.5 * rw) / rw,
          wy * (box[1] + 0.5 * h - reference[1] - 0.5 * rh) / rh,
          ww * np.log(w / rw), wh * np.log(h / rh)]


def _random_boxes(rng, num, size=32):
  """Integer-corner boxes on a small grid, so IoUs are exact rationals in both precisions."""
  corners = rng.integers(0, size, (num, 2))
  sides = rng.integers(6, size // 2, (num, 2))
  return np.concatenate([corners, corners + sides], axis=1).astype(np.float32)


def _scene(seed, num_boxes, crowd=True):
  """Candidates and 5 gt: 3 real (one crowd if asked), 2 padded; candidates cover gt."""
  rng = np.random.default_rng(seed)
  gt = _random_boxes(rng, 5)
  gt[3:] = 0.0
  boxes = _random_boxes(rng, num_boxes)
  boxes[:3] = gt[:3] + rng.integers(0, 2, (3, 4)) * [-1, -1, 1, 1]  # high-IoU candidates
  valid = np.array([True, True, True, False, False])
  is_crowd = np.array([False, False, crowd, False, False])
  classes = np.array([3, 1, 2, 0, 0], np.int32)
  return boxes, gt, valid, is_crowd, classes


def _check_sample(labels_sampled, ref_labels, batch_size, fraction):
  """Sampled labels are a subset of the eligible ones, with torchvision's counts."""
  num_pos = min(int(batch_size * fraction), int(np.sum(ref_labels == 1)))
  num_neg = min(batch_size - num_pos, int(np.sum(ref_labels == 0)))
  assert np.sum(labels_sampled == 1) == num_pos
  assert np.sum(labels_sampled == 0) == num_neg
  assert np.all(ref_labels[labels_sampled == 1] == 1)
  assert np.all(ref_labels[labels_sampled == 0] == 0)


def test_match_thresholds_ties_and_low_quality():
  iou = np.array([
      [0.7, 0.3, 0.2, 0.2, 0.0, -1.0],
      [0.1, 0.69, 0.29, 0.1, 0.0, -1.0],
      [-1.0] * 6,  # padded gt
      [0.0] * 6,  # a gt that overlaps nothing: no low-quality matches
  ], np.float32)
  expected = {False: [1, -1, 0, 0, 0, 0], True: [1, 1, 0, 0, 0, 0]}
  for allow in (False, True):
    matched, labels = targets.match(jnp.asarray(iou), 0.7, 0.3, allow)
    # float32 thresholds, as jnp compares: 0.7 and 0.3 exactly are the edge cases.
    ref_matched, ref_labels = _np_match(iou, np.float32(0.7), np.float32(0.3), allow)
    np.testing.assert_array_equal(matched, ref_matched)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(labels, expected[allow])
    assert matched.dtype == jnp.int32 and labels.dtype == jnp.int32
  # Both 0.2s tie for gt 0's best: both become low-quality foreground.
  tied = np.array([[0.2, 0.2, 0.1], [0.05, 0.0, 0.4]], np.float32)
  _, labels = targets.match(jnp.asarray(tied), 0.7, 0.3, True)
  np.testing.assert_array_equal(labels, [1, 1, 1])


def test_match_all_padding():
  matched, labels = targets.match(-jnp.ones((3, 4)), 0.7, 0.3, True)
  np.testing.assert_array_equal(labels, 0)
  np.testing.assert_array_equal(matched, 0)


def test_rpn_targets_against_reference():
  anchors, gt, valid, is_crowd, _ = _scene(0, 60)
  # Anchors at IoU exactly 0.7 (70 / 100) and exactly 0.3 (60 / 200) with gt 0.
  x1, y1 = gt[0, :2]
  gt[0] = [x1, y1, x1 + 10, y1 + 7]
  anchors[3] = [x1, y1, x1 + 10, y1 + 10]
  anchors[4] = [x1, y1 + 1, x1 + 10, y1 + 20]
  ref_matched, ref_labels = _np_match_with_crowd(
      gt, valid, is_crowd, anchors, np.ones(60, bool), 0.7, 0.3, True, 0.3)
  for batch_size, fraction in [(16, 0.5), (2, 0.5), (64, 0.5)]:  # 2: more positives than room
    out = _rpn_targets(jnp.asarray(anchors), gt, valid, is_crowd, jax.random.key(1),
                              batch_size=batch_size, positive_fraction=fraction)
    labels = np.asarray(out['labels'])
    _check_sample(labels, ref_labels, batch_size, fraction)
    for a in range(60):
      expected = (_np_encode(gt[ref_matched[a]].astype(np.float64), anchors[a], (1, 1, 1, 1))
                  if labels[a] == 1 else [0.0] * 4)
      np.testing.assert_allclose(out['box_targets'][a], expected, rtol=1e-5, atol=1e-5)
  assert ref_labels[3] == 1  # IoU exactly 0.7
  assert numpy_reference.box_iou(gt[0], anchors[4]) == 0.3 and ref_labels[4] == -1
  assert np.any(ref_labels == -1)
  # Anchors around the crowd box are ignored, never negative, and never positive.
  crowd_iou = _np_iou(gt[2:3], anchors, [True], np.ones(60, bool))[0]
  assert np.all(ref_labels[(crowd_iou >= 0.3) & (ref_labels != 1)] == -1)
  assert ref_labels[2] == -1  # the near-copy of the crowd box


def test_rpn_targets_all_padding():
  anchors, gt, _, is_crowd, _ = _scene(1, 30)
  out = _rpn_targets(jnp.asarray(anchors), gt, np.zeros(5, bool), is_crowd,
                            jax.random.key(0), batch_size=16)
  np.testing.assert_array_equal(np.sort(np.asarray(out['labels']))[-16:], 0)
  assert np.sum(np.asarray(out['labels']) == -1) == 14
  np.testing.assert_array_equal(out['box_targets'], 0.0)


def test_roi_targets_against_reference():
  proposals, gt, valid, is_crowd, classes = _scene(2, 40)
  proposal_valid = np.arange(40) < 34
  candidates = np.concatenate([proposals, gt])
  candidate_valid = np.concatenate([proposal_valid, valid & ~is_crowd])
  ref_matched, ref_labels = _np_match_with_crowd(
      gt, valid, is_crowd, candidates, candidate_valid, 0.5, 0.5, False, 0.5)
  ref_labels = np.where(candidate_valid, ref_labels, -1)
  weights = (10.0, 10.0, 5.0, 5.0)
  for batch_size, fraction in [(16, 0.25), (64, 0.25), (64, 1.0)]:
    out = jax.tree.map(np.asarray, _roi_targets(
        proposals, proposal_valid, gt, classes, valid, is_crowd, jax.random.key(3),
        batch_size=batch_size, positive_fraction=fraction, weights=weights))
    num_pos = min(int(batch_size * fraction), int(np.sum(ref_labels == 1)))
    num_neg = min(batch_size - num_pos, int(np.sum(ref_labels == 0)))
    np.testing.assert_array_equal(out['is_foreground'], np.arange(batch_size) < num_pos)
    np.testing.assert_array_equal(out['roi_valid'], np.arange(batch_size) < num_pos + num_neg)
    seen = []
    for s in range(batch_size):
      if not out['roi_valid'][s]:
        np.testing.assert_array_equal(out['rois'][s], 0.0)
        assert out['labels'][s] == 0 and not out['is_foreground'][s]
        continue
      # Find the candidate this RoI is (gt appended last, so duplicates resolve either way).
      c = next(i for i in range(len(candidates)) if i not in seen
               and np.array_equal(candidates[i], out['rois'][s])
               and ref_labels[i] == (1 if out['is_foreground'][s] else 0))
      seen.append(c)
      if out['is_foreground'][s]:
        assert out['matched_gt'][s] == ref_matched[c]
        assert out['labels'][s] == classes[ref_matched[c]]
        np.testing.assert_allclose(
            out['box_targets'][s], _np_encode(gt[ref_matched[c]].astype(np.float64),
                                              candidates[c].astype(np.float64), weights),
            rtol=1e-5, atol=1e-4)
      else:
        assert out['labels'][s] == 0
        np.testing.assert_array_equal(out['box_targets'][s], 0.0)
  # The two appended non-crowd gt boxes are foreground candidates; the crowd one is not.
  assert ref_labels[40] == 1 and ref_labels[41] == 1 and ref_labels[42] == -1
  assert ref_labels[2] == -1  # proposal on the crowd box: ignored


def test_roi_targets_no_valid_proposals_and_all_padding():
  proposals, gt, valid, is_crowd, classes = _scene(3, 8, crowd=False)
  out = _roi_targets(proposals, np.zeros(8, bool), gt, classes, valid, is_crowd,
                            jax.random.key(0), batch_size=8)
  # Only the appended gt remain, all foreground, each its own perfect target.
  assert int(np.sum(out['roi_valid'])) == 2  # int(8 * 0.25) positives, no negatives
  np.testing.assert_allclose(out['box_targets'][:2], 0.0, atol=1e-6)
  assert set(np.asarray(out['labels'][:2]).tolist()) <= {3, 1, 2}
  out = _roi_targets(proposals, np.ones(8, bool), gt, classes, np.zeros(5, bool),
                            is_crowd, jax.random.key(0), batch_size=16)
  assert int(np.sum(out['roi_valid'])) == 8 and not np.any(out['is_foreground'])
  np.testing.assert_array_equal(out['labels'], 0)


def test_vmap_jit_matches_per_image():
  scenes = [_scene(seed, 24) for seed in (4, 5)]
  keys = jax.random.split(jax.random.key(7), 2)

  def stack(i):
    return np.stack([scene[i] for scene in scenes])

  anchors = jnp.asarray(stack(0)[0])
  rpn = jax.jit(jax.vmap(functools.partial(targets.rpn_targets, anchors, batch_size=8)))
  roi = jax.jit(jax.vmap(functools.partial(targets.roi_targets, batch_size=8)))
  proposal_valid = np.ones((2, 24), bool)
  batched_rpn = rpn(stack(1), stack(2), stack(3), keys)
  batched_roi = roi(stack(0), proposal_valid, stack(1), stack(4), stack(2), stack(3), keys)
  for i, (boxes, gt, valid, is_crowd, classes) in enumerate(scenes):
    single_rpn = _rpn_targets(anchors, gt, valid, is_crowd, keys[i], batch_size=8)
    single_roi = _roi_targets(boxes, proposal_valid[i], gt, classes, valid, is_crowd,
                              keys[i], batch_size=8)
    for batched, single in ((batched_rpn, single_rpn), (batched_roi, single_roi)):
      for name in single:
        np.testing.assert_allclose(batched[name][i], single[name], rtol=1e-6, atol=1e-6)
