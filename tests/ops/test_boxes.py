"""Tests for maskrcnn_jax.ops.boxes against plain-loop NumPy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from maskrcnn_jax.ops import boxes as box_ops
from tests.numpy_reference import box_area
from tests.numpy_reference import box_iou
from tests.numpy_reference import decode_box

CLAMP = math.log(1000. / 16)
WEIGHTS = (10., 10., 5., 5.)

# Jitted once per static configuration: op-by-op dispatch is slow on tiny inputs.
area = jax.jit(box_ops.area)
pairwise_iou = jax.jit(box_ops.pairwise_iou)
clip_boxes = jax.jit(box_ops.clip_boxes)
encode_boxes = jax.jit(box_ops.encode_boxes, static_argnames='weights')
decode_boxes = jax.jit(box_ops.decode_boxes, static_argnames=('weights', 'clamp'))


def _random_boxes(rng, n, image=100.0):
  xy = rng.uniform(0, image, (n, 2))
  wh = rng.uniform(1, image / 2, (n, 2))
  return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def _edge_boxes():
  """Border-touching, zero-area, identical and all-zero (padding) boxes."""
  return np.array([
      [0, 0, 100, 100],   # the whole image
      [0, 0, 10, 10],     # top-left corner
      [90, 90, 100, 100],  # bottom-right corner
      [5, 5, 5, 5],       # point
      [5, 5, 5, 20],      # zero width
      [0, 0, 0, 0],       # padding
      [0, 0, 10, 10],     # duplicate of a corner box
      [20, 20, 10, 10],   # inverted
  ], np.float32)


def _iou_ref(boxes_a, boxes_b, valid_a, valid_b):
  out = np.zeros((len(boxes_a), len(boxes_b)))
  for i, a in enumerate(boxes_a):
    for j, b in enumerate(boxes_b):
      if not (valid_a[i] and valid_b[j]):
        out[i, j] = -1.0
        continue
      out[i, j] = box_iou(a, b)
  return out


def _encode_ref(box, ref, weights):
  wx, wy, ww, wh = weights
  w, h = box[2] - box[0], box[3] - box[1]
  rw, rh = ref[2] - ref[0], ref[3] - ref[1]
  cx, cy = box[0] + 0.5 * w, box[1] + 0.5 * h
  rcx, rcy = ref[0] + 0.5 * rw, ref[1] + 0.5 * rh
  return [wx * (cx - rcx) / rw, wy * (cy - rcy) / rh, ww * math.log(w / rw),
          wh * math.log(h / rh)]


def test_area():
  boxes = np.concatenate([_random_boxes(np.random.default_rng(0), 10), _edge_boxes()])
  expected = [box_area(b) for b in boxes.astype(np.float64)]
  np.testing.assert_allclose(area(boxes), expected, rtol=1e-6)
  np.testing.assert_allclose(area(boxes.reshape(2, 9, 4)), np.reshape(expected, (2, 9)),
                             rtol=1e-6)


def test_pairwise_iou_matches_reference():
  rng = np.random.default_rng(1)
  boxes_a = np.concatenate([_random_boxes(rng, 12, 30.0), _edge_boxes()])
  boxes_b = np.concatenate([_edge_boxes(), _random_boxes(rng, 9, 30.0)])
  valid_a = rng.uniform(size=len(boxes_a)) < 0.8
  valid_b = rng.uniform(size=len(boxes_b)) < 0.8
  got = pairwise_iou(boxes_a, boxes_b, valid_a, valid_b)
  assert got.shape == (len(boxes_a), len(boxes_b))
  expected = _iou_ref(boxes_a.astype(np.float64), boxes_b.astype(np.float64), valid_a,
                      valid_b)
  np.testing.assert_allclose(got, expected, atol=1e-6)
  # Without masks every pair is valid.
  all_valid = _iou_ref(boxes_a.astype(np.float64), boxes_b.astype(np.float64),
                       np.ones(len(boxes_a), bool), np.ones(len(boxes_b), bool))
  np.testing.assert_allclose(pairwise_iou(boxes_a, boxes_b), all_valid, atol=1e-6)
  np.testing.assert_allclose(box_ops.pairwise_iou(boxes_a, boxes_b, valid_a=valid_a),
                             np.where(valid_a[:, None], all_valid, -1.0), atol=1e-6)


def test_pairwise_iou_edge_cases():
  edges = _edge_boxes()
  iou = np.asarray(pairwise_iou(edges, edges))
  assert np.all(np.isfinite(iou))
  assert iou[1, 6] == 1.0  # identical boxes
  assert iou[0, 1] == np.float32(0.01)  # corner box inside the whole image
  assert np.all(iou[3:6, :] == 0.0) and np.all(iou[:, 3:6] == 0.0)  # zero-area pairs
  # All padding: every pair -1, so no padded box can be a match or a negative.
  padding = np.zeros((3, 4), np.float32)
  np.testing.assert_array_equal(
      pairwise_iou(padding, edges, np.zeros(3, bool), np.ones(8, bool)), -np.ones((3, 8)))
  np.testing.assert_array_equal(
      pairwise_iou(edges, padding, None, np.zeros(3, bool)), -np.ones((8, 3)))


def test_pairwise_iou_gradient_finite_for_zero_area():
  edges = _edge_boxes()
  grad = jax.jit(jax.grad(lambda a, b: jnp.sum(box_ops.pairwise_iou(a, b)), (0, 1)))
  grad_a, grad_b = grad(edges, edges)
  assert np.all(np.isfinite(grad_a)) and np.all(np.isfinite(grad_b))


def test_clip_boxes():
  boxes = np.array([[-5, -5, 50, 40], [10, 20, 300, 30], [-10, -10, -1, -2],
                    [0, 0, 64, 48], [70, 60, 80, 70]], np.float32)
  expected = np.array([[0, 0, 50, 40], [10, 20, 64, 30], [0, 0, 0, 0], [0, 0, 64, 48],
                       [64, 48, 64, 48]], np.float32)
  np.testing.assert_array_equal(clip_boxes(boxes, 48, 64), expected)
  # Traced per-image sizes under vmap, and sizes broadcast against [..., 4] boxes.
  batch = np.stack([boxes, boxes])
  sizes = np.array([[48., 64.], [1000., 1000.]], np.float32)
  got = jax.vmap(clip_boxes)(batch, sizes[:, 0], sizes[:, 1])
  np.testing.assert_array_equal(got[0], expected)
  np.testing.assert_array_equal(got[1], np.maximum(boxes, 0))
  got = clip_boxes(batch, sizes[:, :1], sizes[:, 1:])
  np.testing.assert_array_equal(got, jax.vmap(clip_boxes)(batch, sizes[:, 0], sizes[:, 1]))


def test_encode_matches_reference():
  rng = np.random.default_rng(2)
  boxes, reference = _random_boxes(rng, 20), _random_boxes(rng, 20)
  for weights in [(1., 1., 1., 1.), WEIGHTS]:
    expected = [_encode_ref(b, r, weights) for b, r in
                zip(boxes.astype(np.float64), reference.astype(np.float64))]
    np.testing.assert_allclose(encode_boxes(boxes, reference, weights), expected,
                               rtol=1e-5, atol=1e-5)
  # Broadcasting one reference against many boxes.
  got = encode_boxes(boxes.reshape(4, 5, 4), reference[:5], weights=WEIGHTS)
  np.testing.assert_allclose(got[2], encode_boxes(boxes[10:15], reference[:5], WEIGHTS),
                             rtol=1e-6)


def test_encode_degenerate_boxes_are_finite():
  edges = _edge_boxes()
  reference = np.broadcast_to(np.array([0, 0, 10, 10], np.float32), edges.shape)
  assert np.all(np.isfinite(encode_boxes(edges, reference, WEIGHTS)))
  assert np.all(np.isfinite(encode_boxes(reference, edges, WEIGHTS)))


def test_decode_matches_reference_and_clamps():
  rng = np.random.default_rng(3)
  reference = _random_boxes(rng, 12)
  deltas = rng.normal(0, 2, (12, 4)).astype(np.float32)
  deltas[0, 2:] = 100.0  # far past the clamp: exp must not overflow
  deltas[1, 2:] = -100.0  # shrinks to a point, no clamp from below
  deltas[2, 2] = WEIGHTS[2] * CLAMP + 1.0
  for weights in [(1., 1., 1., 1.), WEIGHTS]:
    got = np.asarray(decode_boxes(deltas, reference, weights))
    expected = [decode_box(d, r, weights, CLAMP) for d, r in
                zip(deltas.astype(np.float64), reference.astype(np.float64))]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)
    assert np.all(np.isfinite(got))
  got = np.asarray(decode_boxes(deltas, reference, WEIGHTS))
  ref_w = reference[0, 2] - reference[0, 0]
  np.testing.assert_allclose(got[0, 2] - got[0, 0], ref_w * 1000. / 16, rtol=1e-5)
  np.testing.assert_allclose(got[1, 2:] - got[1, :2], 0.0, atol=1e-4)
  got = decode_boxes(deltas, reference, WEIGHTS, clamp=1.0)
  np.testing.assert_allclose(got[0, 2] - got[0, 0], ref_w * math.e, rtol=1e-5)


def test_encode_decode_round_trip():
  rng = np.random.default_rng(4)
  boxes, reference = _random_boxes(rng, 30), _random_boxes(rng, 30)
  for weights in [(1., 1., 1., 1.), WEIGHTS]:
    deltas = encode_boxes(boxes, reference, weights)
    np.testing.assert_allclose(decode_boxes(deltas, reference, weights), boxes,
                               rtol=1e-5, atol=1e-4)
  # Zero deltas return the reference itself.
  np.testing.assert_allclose(decode_boxes(np.zeros_like(reference), reference), reference,
                             atol=1e-5)


def test_vmap_over_batch():
  rng = np.random.default_rng(5)
  boxes = _random_boxes(rng, 12).reshape(3, 4, 4)
  reference = _random_boxes(rng, 12).reshape(3, 4, 4)
  valid = rng.uniform(size=(3, 4)) < 0.7
  batched = jax.jit(jax.vmap(box_ops.pairwise_iou))(boxes, reference, valid, valid)
  for i in range(3):
    np.testing.assert_allclose(batched[i], pairwise_iou(boxes[i], reference[i], valid[i],
                                                       valid[i]), atol=1e-7)
  round_trip = jax.jit(jax.vmap(lambda b, r: box_ops.decode_boxes(
      box_ops.encode_boxes(b, r, WEIGHTS), r, WEIGHTS)))(boxes, reference)
  np.testing.assert_allclose(round_trip, boxes, rtol=1e-5, atol=1e-4)
