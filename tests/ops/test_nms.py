"""Tests for maskrcnn_jax.ops.nms against a NumPy greedy loop and recorded torchvision."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.ops import nms as nms_ops
from tests.conftest import FIXTURES
from tests.numpy_reference import greedy_nms

nms = jax.jit(nms_ops.nms, static_argnames=('iou_threshold', 'max_output'))
batched_nms = jax.jit(nms_ops.batched_nms, static_argnames=('iou_threshold', 'max_output'))


def random_boxes(rng, num_boxes):
  """Clustered boxes with exact duplicates, zero-area boxes and quantized (tied) scores."""
  base = rng.uniform(0, 40, size=(4, 2))
  corners = base[rng.integers(0, 4, num_boxes)] + rng.normal(scale=2.0, size=(num_boxes, 2))
  sides = rng.uniform(1, 20, size=(num_boxes, 2))
  boxes = np.concatenate([corners, corners + sides], axis=1)
  boxes[1::7] = boxes[0::7][:len(boxes[1::7])]  # duplicates
  boxes[2::9, 2] = boxes[2::9, 0]  # zero width
  boxes[3::11, 2:] = boxes[3::11, :2]  # points
  scores = np.round(rng.uniform(size=num_boxes), 1)  # many ties
  return boxes.astype(np.float32), scores.astype(np.float32)


def check(indices, valid, expected, max_output):
  indices, valid = np.asarray(indices), np.asarray(valid)
  assert indices.shape == valid.shape == (max_output,)
  assert indices.dtype == np.int32
  count = min(len(expected), max_output)
  np.testing.assert_array_equal(valid, np.arange(max_output) < count)
  np.testing.assert_array_equal(indices[:count], expected[:count])
  np.testing.assert_array_equal(indices[count:], 0)


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('iou_threshold', [0.0, 0.3, 0.7])
def test_nms_matches_reference(seed, iou_threshold):
  rng = np.random.default_rng(seed)
  boxes, scores = random_boxes(rng, 40)
  valid = rng.uniform(size=40) > 0.2
  expected = greedy_nms(boxes, scores, iou_threshold, valid)
  for max_output in (3, 60):  # fewer and more than kept
    check(*nms(boxes, scores, valid=valid, iou_threshold=iou_threshold,
               max_output=max_output), expected, max_output)


def test_nms_all_invalid_and_default_valid():
  rng = np.random.default_rng(0)
  boxes, scores = random_boxes(rng, 10)
  check(*nms(boxes, scores, valid=np.zeros(10, bool), iou_threshold=0.5, max_output=4),
        [], 4)
  check(*nms(boxes, scores, iou_threshold=0.5, max_output=12),
        greedy_nms(boxes, scores, 0.5), 12)


def test_nms_invalid_box_never_suppresses():
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
  scores = np.array([0.9, 0.8, 0.1], np.float32)
  check(*nms(boxes, scores, valid=np.array([False, True, True]), iou_threshold=0.5,
             max_output=3), [1, 2], 3)


def test_nms_ties_and_threshold_boundary():
  # IoU of box 0 with 1 is exactly 0.5: kept at threshold 0.5 (strict >), dropped below.
  boxes = np.array([[0, 0, 4, 4], [0, 0, 4, 2], [0, 0, 4, 4], [0, 0, 0, 0]], np.float32)
  scores = np.array([0.5, 0.5, 0.5, 0.5], np.float32)
  check(*nms(boxes, scores, iou_threshold=0.5, max_output=4), [0, 1, 3], 4)
  check(*nms(boxes, scores, iou_threshold=0.49, max_output=4), [0, 3], 4)


@pytest.mark.parametrize('seed', range(3))
def test_batched_nms_matches_per_class_reference(seed):
  rng = np.random.default_rng(seed)
  boxes, scores = random_boxes(rng, 50)
  classes = rng.integers(1, 4, 50).astype(np.int32)
  valid = rng.uniform(size=50) > 0.1
  expected = greedy_nms(boxes, scores, 0.5, valid, classes)
  # Independent per-class loop: the union of each class's kept boxes, re-ranked.
  per_class = [i for c in range(1, 4)
               for i in greedy_nms(boxes, scores, 0.5, valid & (classes == c))]
  assert sorted(per_class, key=lambda i: (-scores[i], i)) == expected
  for max_output in (5, 64):
    check(*batched_nms(boxes, scores, classes, valid=valid, iou_threshold=0.5,
                       max_output=max_output), expected, max_output)


def test_nms_vmap_batch_of_images():
  rng = np.random.default_rng(7)
  sets = [random_boxes(rng, 30) for _ in range(3)]
  boxes, scores = np.stack([b for b, _ in sets]), np.stack([s for _, s in sets])
  valid = rng.uniform(size=(3, 30)) > 0.3
  valid[1] = False
  fn = jax.jit(jax.vmap(functools.partial(nms_ops.nms, iou_threshold=0.6, max_output=20)))
  indices, out_valid = fn(jnp.asarray(boxes), jnp.asarray(scores), valid=jnp.asarray(valid))
  for b in range(3):
    check(indices[b], out_valid[b], greedy_nms(boxes[b], scores[b], 0.6, valid[b]), 20)


@pytest.mark.parametrize('case', ['uniform', 'clustered', 'clustered_07', 'dense_03'])
def test_matches_torchvision(case):
  data = np.load(FIXTURES / 'torchvision_nms.npz')
  boxes, scores = data[f'{case}_boxes'], data[f'{case}_scores']
  classes, threshold = data[f'{case}_classes'], float(data[f'{case}_threshold'])
  num_boxes = len(scores)
  check(*nms(boxes, scores, iou_threshold=threshold, max_output=num_boxes),
        data[f'{case}_keep'], num_boxes)
  check(*batched_nms(boxes, scores, classes, iou_threshold=threshold, max_output=num_boxes),
        data[f'{case}_batched_keep'], num_boxes)


@pytest.mark.parametrize('num, k', [(10, 4), (5, 8), (6, 6)])
def test_top_k_valid_selects_the_best_valid_scores(num, k):
  rng = np.random.default_rng(num + k)
  scores = rng.permutation(num).astype(np.float32)  # distinct: one right answer
  valid = rng.random(num) < 0.6
  indices, keep = jax.jit(nms_ops.top_k_valid, static_argnames='k')(scores, valid, k=k)
  expected = sorted(np.flatnonzero(valid), key=lambda i: -scores[i])[:k]
  assert keep.sum() == len(expected)
  np.testing.assert_array_equal(np.asarray(indices)[:len(expected)], expected)
  np.testing.assert_array_equal(np.asarray(indices)[len(expected):], 0)
  assert np.all(np.asarray(keep)[:len(expected)]) and not np.any(np.asarray(keep)[len(expected):])
  none, none_keep = nms_ops.top_k_valid(scores, np.zeros(num, bool), k)
  assert not np.any(none_keep) and np.all(np.asarray(none) == 0)
