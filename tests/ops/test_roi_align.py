"""ops/roi_align.py, roi_pool.py and roi_levels.py against loop references and recorded
torchvision."""

import functools
import math

import jax
from jax import test_util
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.ops import roi_align as roi_ops
from maskrcnn_jax.ops import roi_levels
from maskrcnn_jax.ops import roi_pool as roi_pool_ops
from tests.conftest import FIXTURES

# Jitted once per static configuration: op-by-op dispatch is ~10x slower on tiny inputs.
roi_align = jax.jit(roi_ops.roi_align, static_argnames=(
    'output_size', 'spatial_scale', 'sampling_ratio', 'aligned'))


roi_pool = jax.jit(roi_pool_ops.roi_pool, static_argnames=(
    'output_size', 'spatial_scale', 'max_bin_cells'))


multilevel_roi_align = jax.jit(roi_ops.multilevel_roi_align, static_argnames=(
    'output_size', 'sampling_ratio', 'aligned', 'min_level'))


multilevel_roi_pool = jax.jit(roi_pool_ops.multilevel_roi_pool, static_argnames=(
    'output_size', 'max_bin_cells', 'min_level'))


def _bilinear_ref(features, y, x):
  """torchvision's bilinear_interpolate for one point; features [H, W, C]."""
  height, width = features.shape[:2]
  if y < -1.0 or y > height or x < -1.0 or x > width:
    return np.zeros(features.shape[-1])
  y, x = max(y, 0.0), max(x, 0.0)
  y_low, x_low = int(y), int(x)
  if y_low >= height - 1:
    y_low = y_high = height - 1
    y = float(y_low)
  else:
    y_high = y_low + 1
  if x_low >= width - 1:
    x_low = x_high = width - 1
    x = float(x_low)
  else:
    x_high = x_low + 1
  ly, lx = y - y_low, x - x_low
  return ((1 - ly) * (1 - lx) * features[y_low, x_low] + (1 - ly) * lx * features[y_low, x_high]
          + ly * (1 - lx) * features[y_high, x_low] + ly * lx * features[y_high, x_high])


def roi_align_ref(features, boxes, output_size, spatial_scale, sampling_ratio, aligned):
  """Plain-loop RoIAlign from torchvision's CPU kernel; features [H, W, C], boxes [R, 4]."""
  offset = 0.5 if aligned else 0.0
  out = np.zeros((len(boxes), output_size, output_size, features.shape[-1]))
  for r, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64)):
    start_x, start_y = x1 * spatial_scale - offset, y1 * spatial_scale - offset
    roi_w = x2 * spatial_scale - offset - start_x
    roi_h = y2 * spatial_scale - offset - start_y
    if not aligned:
      roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_w, bin_h = roi_w / output_size, roi_h / output_size
    for ph in range(output_size):
      for pw in range(output_size):
        total = np.zeros(features.shape[-1])
        for iy in range(sampling_ratio):
          y = start_y + ph * bin_h + (iy + 0.5) * bin_h / sampling_ratio
          for ix in range(sampling_ratio):
            x = start_x + pw * bin_w + (ix + 0.5) * bin_w / sampling_ratio
            total += _bilinear_ref(features, y, x)
        out[r, ph, pw] = total / sampling_ratio**2
  return out


def roi_pool_ref(features, boxes, output_size, spatial_scale):
  """Plain-loop RoIPool from torchvision's CPU kernel; features [H, W, C], boxes [R, 4]."""
  height, width = features.shape[:2]
  c_round = lambda v: int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)
  out = np.zeros((len(boxes), output_size, output_size, features.shape[-1]))
  for r, box in enumerate(np.asarray(boxes, np.float64)):
    x1, y1, x2, y2 = (c_round(v * spatial_scale) for v in box)
    bin_w, bin_h = max(x2 - x1 + 1, 1) / output_size, max(y2 - y1 + 1, 1) / output_size
    for ph in range(output_size):
      h0 = min(max(math.floor(ph * bin_h) + y1, 0), height)
      h1 = min(max(math.ceil((ph + 1) * bin_h) + y1, 0), height)
      for pw in range(output_size):
        w0 = min(max(math.floor(pw * bin_w) + x1, 0), width)
        w1 = min(max(math.ceil((pw + 1) * bin_w) + x1, 0), width)
        if h1 > h0 and w1 > w0:
          out[r, ph, pw] = features[h0:h1, w0:w1].max(axis=(0, 1))
  return out


# Feature map 9 x 11 at scale 0.5 (image 18 x 22): interior, on the border, partly and
# wholly outside, smaller than a cell, zero-area, padding, and a degenerate (x2 < x1) box.
BOXES = np.array([[2.3, 3.1, 15.7, 12.4], [0., 0., 22., 18.], [-6., -3., 8.5, 9.],
                  [16., 14., 30.4, 27.], [5.2, 6.1, 5.9, 6.6], [7., 7., 7., 7.],
                  [0., 0., 0., 0.], [20.9, 1., 21.9, 17.5], [30., 25., 40., 31.],
                  [9., 4., 6., 8.]], np.float32)


@pytest.fixture(scope='module')
def features():
  return np.random.default_rng(0).normal(size=(9, 11, 3)).astype(np.float32)


@pytest.mark.parametrize('aligned', [False, True])
@pytest.mark.parametrize('sampling_ratio', [1, 2, 4])
def test_roi_align_matches_loop_reference(features, aligned, sampling_ratio):
  out = roi_align(jnp.asarray(features), jnp.asarray(BOXES), 3, 0.5, sampling_ratio,
                          aligned)
  assert out.shape == (len(BOXES), 3, 3, 3) and out.dtype == jnp.float32
  ref = roi_align_ref(features, BOXES, 3, 0.5, sampling_ratio, aligned)
  np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize('output_size, spatial_scale', [(3, 0.5), (2, 1.0), (4, 0.25)])
def test_roi_pool_matches_loop_reference(features, output_size, spatial_scale):
  out = roi_pool(jnp.asarray(features), jnp.asarray(BOXES), output_size, spatial_scale)
  ref = roi_pool_ref(features, BOXES, output_size, spatial_scale)
  np.testing.assert_allclose(out, ref, atol=1e-6)


def test_roi_pool_window_is_exact_up_to_max_bin_cells(features):
  box = np.array([[0., 0., 21., 17.]], np.float32)  # 11 x 9 cells at scale 0.5 -> one bin
  ref = roi_pool_ref(features, box, 1, 0.5)
  np.testing.assert_allclose(roi_pool(features, box, 1, 0.5, max_bin_cells=11), ref)
  clipped = roi_pool(features, box, 1, 0.5, max_bin_cells=4)
  np.testing.assert_allclose(clipped[0, 0, 0], features[:4, :4].max(axis=(0, 1)))


def test_sampling_ratio_must_be_static_positive(features):
  with pytest.raises(ValueError, match='sampling_ratio'):
    roi_ops.roi_align(features, BOXES, 3, 0.5, 0, False)
  with pytest.raises(ValueError, match='sampling_ratio'):
    roi_ops.multilevel_roi_align([features[None]], BOXES[None], 3, -1, False)


def test_assign_levels():
  sides = np.array([0., 1., 111.9, 112., 223.9, 224., 447., 448., 2000.], np.float32)
  boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], -1)
  expected = [2, 2, 2, 3, 3, 4, 4, 5, 5]
  np.testing.assert_array_equal(roi_levels.assign_levels(jnp.asarray(boxes)), expected)
  ref = np.clip(np.floor(4 + np.log2(np.maximum(sides, 1e-30) / 224) + 1e-6), 2, 5)
  np.testing.assert_array_equal(expected, ref)
  degenerate = np.array([[[10., 10., 5., 300.]]], np.float32)
  assert roi_levels.assign_levels(degenerate).tolist() == [[2]]


def _pyramid(rng, batch=2, height=64, width=96, channels=2):
  return [rng.normal(size=(batch, height >> l, width >> l, channels)).astype(np.float32)
          for l in range(2, 6)]


# Per image, RoIs on several levels plus all-zero padding boxes.
ML_BOXES = np.array([[[3., 4., 40., 30.], [-60., -40., 200., 150.], [-150., -100., 250., 200.],
                      [0., 0., 0., 0.], [10., 2., 130., 66.]],
                     [[0., 0., 0., 0.], [-300., -200., 400., 300.], [1., 1., 3.5, 2.],
                      [20., 10., 140., 200.], [-500., -400., 500., 400.]]], np.float32)


@pytest.mark.parametrize('aligned', [False, True])
def test_multilevel_roi_align_uses_each_boxes_level(aligned):
  features = _pyramid(np.random.default_rng(1))
  levels = np.asarray(roi_levels.assign_levels(ML_BOXES))
  assert levels.tolist() == [[2, 3, 4, 2, 2], [2, 5, 2, 3, 5]]
  out = multilevel_roi_align([jnp.asarray(f) for f in features], jnp.asarray(ML_BOXES),
                                     3, 2, aligned)
  assert out.shape == (2, 5, 3, 3, 2)
  for b in range(2):
    for r in range(5):
      level = levels[b, r]
      ref = roi_align_ref(features[level - 2][b], ML_BOXES[b, r:r + 1], 3, 2.0**-level, 2,
                          aligned)
      np.testing.assert_allclose(out[b, r], ref[0], atol=1e-5)


def test_multilevel_roi_pool_uses_each_boxes_level():
  features = _pyramid(np.random.default_rng(2))
  levels = np.asarray(roi_levels.assign_levels(ML_BOXES))
  # With S = 3 some bins here span up to 11 cells: a window of 12 keeps this exact.
  out = multilevel_roi_pool(features, ML_BOXES, 3, max_bin_cells=12)
  for b in range(2):
    for r in range(5):
      level = levels[b, r]
      ref = roi_pool_ref(features[level - 2][b], ML_BOXES[b, r:r + 1], 3, 2.0**-level)
      np.testing.assert_allclose(out[b, r], ref[0], atol=1e-6)


def test_matches_recorded_torchvision():
  data = np.load(FIXTURES / 'torchvision_roi_align.npz')
  features, boxes, scale = data['features'], data['boxes'], float(data['spatial_scale'])
  size = data['pool'].shape[1]
  for aligned in (0, 1):
    for ratio in (1, 2, 4):
      out = roi_align(features, boxes, size, scale, ratio, bool(aligned))
      np.testing.assert_allclose(out, data[f'align_{aligned}_{ratio}'], atol=1e-5)
  np.testing.assert_allclose(roi_pool(features, boxes, size, scale), data['pool'],
                             atol=1e-5)
  pyramid = [data[f'ml_features_{l}'] for l in range(2, 6)]
  out = multilevel_roi_align(pyramid, data['ml_boxes'], size, 2, False)
  np.testing.assert_allclose(out, data['ml_align'], atol=1e-5)


def test_roi_align_gradient_matches_finite_differences(features):
  boxes = BOXES[[0, 2, 4, 7]]
  with jax.enable_x64(True):
    # Reverse mode only: the features' gradient is a custom VJP (one scatter-add).
    f = lambda x: roi_ops.roi_align(x, jnp.asarray(boxes, jnp.float64), 2, 0.5, 2, True)
    test_util.check_grads(jax.jit(f), (jnp.asarray(features, jnp.float64),), order=1,
                          modes=('rev',), atol=1e-8, rtol=1e-8)
    g = lambda x: roi_ops.multilevel_roi_align(x, jnp.asarray(ML_BOXES, jnp.float64), 2, 1,
                                               False)
    pyramid = [jnp.asarray(p, jnp.float64) for p in _pyramid(np.random.default_rng(3))]
    test_util.check_grads(jax.jit(g), (pyramid,), order=1, modes=('rev',), atol=1e-8, rtol=1e-8)
  assert jnp.zeros(()).dtype == jnp.float32
  # As torchvision's roi_align: no gradient reaches the boxes.
  box_grad = jax.grad(lambda b: jnp.sum(roi_ops.roi_align(jnp.asarray(features), b, 2, 0.5, 2,
                                                          True)))(jnp.asarray(boxes))
  assert box_grad.shape == boxes.shape and not np.any(box_grad)


def test_jit_does_not_recompile_for_new_values():
  traces = []

  @jax.jit
  def pooled(features, boxes):
    traces.append(None)
    return (roi_ops.multilevel_roi_align(features, boxes, 2, 2, True),
            roi_pool_ops.multilevel_roi_pool(features, boxes, 2))

  rng = np.random.default_rng(4)
  for scale in (1.0, 0.5, 2.0):
    pooled(_pyramid(rng), ML_BOXES * scale)
  assert len(traces) == 1


def test_bfloat16_features_follow_float32_in_value_and_gradient():
  """bfloat16 features are read as they are, but summed and back-propagated in float32."""
  pyramid = [jnp.asarray(p) for p in _pyramid(np.random.default_rng(5))]
  pyramid16 = [p.astype(jnp.bfloat16) for p in pyramid]
  exact = [p.astype(jnp.float32) for p in pyramid16]  # the same values, in float32
  boxes = jnp.asarray(ML_BOXES, jnp.float32)
  cotangent = jnp.asarray(np.random.default_rng(6).normal(size=ML_BOXES.shape[:2] + (3, 3, 2)),
                          jnp.bfloat16).astype(jnp.float32)  # exact in both dtypes

  def value_and_grad(features):
    out, vjp = jax.vjp(lambda q: roi_ops.multilevel_roi_align(q, boxes, 3, 2, True), features)
    return out, vjp(cotangent.astype(out.dtype))[0]

  out16, grad16 = jax.jit(value_and_grad)(pyramid16)
  out32, grad32 = jax.jit(value_and_grad)(exact)
  assert out16.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grad16)
  # Only the final rounding to bfloat16 differs: a bfloat16 accumulation would be off by
  # many ulps where a cell receives several terms.
  np.testing.assert_array_equal(out16, out32.astype(jnp.bfloat16))
  for g16, g32 in zip(grad16, grad32):
    np.testing.assert_array_equal(g16, g32.astype(jnp.bfloat16))


def test_both_term_sums_give_the_same_values():
  """Under differentiation the loop form (`sum_in_loop`, XLA:CPU) and the unrolled sum add
  the same terms in the same order: the same values and gradients up to the last bit of a
  product XLA fuses into a multiply-add in one form and not the other."""
  pyramid = [jnp.asarray(p) for p in _pyramid(np.random.default_rng(8))]
  boxes = jnp.asarray(ML_BOXES, jnp.float32)
  cotangent = jnp.asarray(np.random.default_rng(9).normal(size=ML_BOXES.shape[:2] + (3, 3, 2)),
                          jnp.float32)

  @functools.partial(jax.jit, static_argnums=1)
  def value_and_grad(features, in_loop):
    out, vjp = jax.vjp(lambda q: roi_ops.multilevel_roi_align(q, boxes, 3, 2, True,
                                                              sum_in_loop=in_loop), features)
    return out, vjp(cotangent)[0]

  out, grad = value_and_grad(pyramid, True)
  unrolled_out, unrolled_grad = value_and_grad(pyramid, False)
  np.testing.assert_allclose(out, unrolled_out, rtol=3e-7, atol=1e-7)
  for g, h in zip(grad, unrolled_grad):
    np.testing.assert_allclose(g, h, rtol=3e-7, atol=1e-7)
  levels = np.asarray(roi_levels.assign_levels(ML_BOXES))
  for b in range(2):
    for r in range(5):
      reference = roi_align_ref(np.asarray(pyramid[levels[b, r] - 2][b]),
                                ML_BOXES[b, r:r + 1], 3, 2.0**-levels[b, r], 2, True)
      np.testing.assert_allclose(out[b, r], reference[0], atol=1e-5)
