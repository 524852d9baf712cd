"""ops/mask_targets.py against a NumPy reference written from the definition."""

import functools

import jax
import numpy as np

from maskrcnn_jax.data import mask_crops
from maskrcnn_jax.ops import mask_targets as mask_ops
from tests import numpy_reference


def mask_targets_reference(crops, gt_boxes, rois, matched_gt, output_size):
  """Values before the threshold: [R, O, O] float64."""
  size = crops.shape[-1]
  out = np.zeros((len(rois), output_size, output_size))
  for r, (rx1, ry1, rx2, ry2) in enumerate(rois.astype(np.float64)):
    gx1, gy1, gx2, gy2 = gt_boxes[matched_gt[r]].astype(np.float64)
    if gx2 <= gx1 or gy2 <= gy1:
      continue
    for i in range(output_size):
      for j in range(output_size):
        y = ry1 + (i + 0.5) * (ry2 - ry1) / output_size  # bin center, image frame
        x = rx1 + (j + 0.5) * (rx2 - rx1) / output_size
        v = (y - gy1) / (gy2 - gy1) * size - 0.5  # crop-cell coordinates
        u = (x - gx1) / (gx2 - gx1) * size - 0.5
        out[r, i, j] = numpy_reference.bilinear_zero_padded(crops[matched_gt[r]], v, u)
  return out


def make_targets_inputs(rng, num_gt=4, num_rois=10, crop_size=16):
  crops = np.stack([numpy_reference.random_blob_mask(rng, crop_size, crop_size) for _ in range(num_gt)])
  xy = rng.uniform(0, 60, (num_gt, 2))
  gt_boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (num_gt, 2))], 1).astype(np.float32)
  gt_boxes[-1] = 0.0  # a padded gt
  matched_gt = rng.integers(0, num_gt, num_rois).astype(np.int32)
  jitter = rng.uniform(-8, 8, (num_rois, 4))
  rois = (gt_boxes[matched_gt] + jitter).astype(np.float32)
  rois[:, 2:] = np.maximum(rois[:, 2:], rois[:, :2] + 1)
  return crops, gt_boxes, rois, matched_gt


def test_mask_targets_matches_reference():
  rng = np.random.default_rng(3)
  crops, gt_boxes, rois, matched_gt = make_targets_inputs(rng)
  out = np.asarray(mask_ops.mask_targets(crops, gt_boxes, rois, matched_gt, output_size=8))
  assert out.shape == (10, 8, 8) and out.dtype == np.float32
  reference = mask_targets_reference(crops, gt_boxes, rois, matched_gt, 8)
  decided = np.abs(reference - 0.5) > 1e-4  # float32 vs float64 right at the threshold
  assert decided.mean() > 0.95
  np.testing.assert_array_equal(out[decided], (reference[decided] >= 0.5).astype(np.float32))
  assert not out[matched_gt == 3].any()  # the padded gt box


def test_mask_targets_roi_equal_to_gt_box_resizes_crop():
  rng = np.random.default_rng(4)
  crops = np.stack([numpy_reference.random_blob_mask(rng, 112, 112) for _ in range(3)])
  gt_boxes = np.array([[10.3, 20.7, 90.1, 64.9], [0.0, 0.0, 30.0, 30.0],
                       [5.5, 1.25, 17.75, 100.5]], np.float32)
  out = mask_ops.mask_targets(crops, gt_boxes, gt_boxes, np.arange(3, dtype=np.int32))
  for n in range(3):
    expected = mask_crops.crop_and_resize_mask(crops[n], (0.0, 0.0, 112.0, 112.0), 28)
    np.testing.assert_array_equal(np.asarray(out[n]), expected.astype(np.float32))


def test_mask_targets_roi_outside_gt_box_is_zero():
  crops = np.ones((1, 16, 16), np.uint8)
  gt_boxes = np.array([[10.0, 10.0, 20.0, 20.0]], np.float32)
  rois = np.array([[20.0, 10.0, 30.0, 20.0], [-5.0, -5.0, 9.9, 9.9], [0.0, 21.0, 50.0, 40.0]],
                  np.float32)
  out = mask_ops.mask_targets(crops, gt_boxes, rois, np.zeros(3, np.int32), output_size=8)
  np.testing.assert_array_equal(np.asarray(out), 0.0)


def test_mask_targets_jit_and_vmap():
  rng = np.random.default_rng(5)
  batch = [make_targets_inputs(rng) for _ in range(2)]
  stacked = [np.stack(parts) for parts in zip(*batch)]
  targets = functools.partial(mask_ops.mask_targets, output_size=8)
  out = jax.jit(jax.vmap(targets))(*stacked)
  assert out.shape == (2, 10, 8, 8)
  for b, inputs in enumerate(batch):
    np.testing.assert_array_equal(np.asarray(out[b]), np.asarray(targets(*inputs)))
