"""Adaptive RoIAlign (sampling_ratio 0, Detectron2's POOLER_SAMPLING_RATIO 0) on a capped grid.

Checked against recorded Detectron2 layers.ROIAlign (tests/tools/record_detectron2_roi_align.py)
and a loop reference written from torchvision's CPU kernel, with the cap applied.
"""

import math

import jax
import numpy as np
import pytest

from maskrcnn_jax.ops import roi_align as roi_ops
from maskrcnn_jax.ops import roi_levels
from tests.conftest import FIXTURES
from tests.ops.test_roi_align import _bilinear_ref

roi_align = jax.jit(roi_ops.roi_align, static_argnames=(
    'output_size', 'spatial_scale', 'sampling_ratio', 'aligned', 'max_sampling_ratio'))


def adaptive_ref(features, boxes, output_size, spatial_scale, aligned, cap):
  """Loop RoIAlign with ceil(roi / S) samples per bin side and axis, at most `cap`."""
  offset = 0.5 if aligned else 0.0
  out = np.zeros((len(boxes), output_size, output_size, features.shape[-1]))
  for r, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64)):
    start_x, start_y = x1 * spatial_scale - offset, y1 * spatial_scale - offset
    roi_w = x2 * spatial_scale - offset - start_x
    roi_h = y2 * spatial_scale - offset - start_y
    if not aligned:
      roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_w, bin_h = roi_w / output_size, roi_h / output_size
    grid_w, grid_h = (min(max(math.ceil(b), 0), cap) for b in (bin_w, bin_h))
    count = max(grid_w * grid_h, 1)
    for ph in range(output_size):
      for pw in range(output_size):
        total = np.zeros(features.shape[-1])
        for iy in range(grid_h):
          y = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h
          for ix in range(grid_w):
            x = start_x + pw * bin_w + (ix + 0.5) * bin_w / grid_w
            total += _bilinear_ref(features, y, x)
        out[r, ph, pw] = total / count
  return out


@pytest.fixture(scope='module')
def recorded():
  return np.load(FIXTURES / 'detectron2_roi_align.npz')


@pytest.mark.slow
@pytest.mark.parametrize('aligned', [0, 1])
@pytest.mark.parametrize('size', [7, 14])
def test_matches_recorded_detectron2_when_under_the_cap(recorded, aligned, size):
  features, boxes = recorded['features'], recorded['boxes']
  scale = float(recorded['spatial_scale'])
  out = roi_align(features, boxes, size, scale, 0, bool(aligned), max_sampling_ratio=6)
  np.testing.assert_allclose(out, recorded[f'align_{aligned}_{size}'], atol=1e-5)


def test_over_the_cap_bins_average_cap_evenly_spaced_samples(recorded):
  features, boxes = recorded['features'], recorded['boxes']
  scale = float(recorded['spatial_scale'])
  out = roi_align(features, boxes, 7, scale, 0, True, max_sampling_ratio=2)
  np.testing.assert_allclose(out, adaptive_ref(features, boxes, 7, scale, True, 2), atol=1e-5)
  # Over the cap only the large RoIs differ from Detectron2; small ones stay exact.
  exact = np.all(np.ceil((boxes[:, 2:] - boxes[:, :2]) * scale / 7) <= 2, axis=1)
  assert 0 < exact.sum() < len(boxes)
  np.testing.assert_allclose(out[exact], recorded['align_1_7'][exact], atol=1e-5)


@pytest.mark.slow
def test_multilevel_adaptive_matches_single_level():
  rng = np.random.default_rng(1)
  pyramid = [rng.standard_normal((1, 64 // 2**i, 48 // 2**i, 2)).astype(np.float32)
             for i in range(4)]
  boxes = np.array([[[3., 5., 40., 70.], [10., 10., 200., 250.], [0., 0., 20., 9.]]],
                   np.float32)
  out = roi_ops.multilevel_roi_align(pyramid, boxes, 7, 0, True, max_sampling_ratio=8)
  levels = np.asarray(roi_levels.assign_levels(boxes[0]))
  for r, level in enumerate(levels):
    ref = adaptive_ref(pyramid[level - 2][0], boxes[0, r:r + 1], 7, 2.0**-level, True, 8)
    np.testing.assert_allclose(out[0, r:r + 1], ref, atol=1e-5)


def test_adaptive_needs_a_cap():
  features = np.zeros((4, 4, 1), np.float32)
  with pytest.raises(ValueError, match='max_sampling_ratio'):
    roi_ops.roi_align(features, np.zeros((1, 4), np.float32), 2, 1.0, 0, True)
