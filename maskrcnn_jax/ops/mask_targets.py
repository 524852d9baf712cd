"""Mask-head targets on the device: each RoI's ground-truth mask resampled onto its bins.

The input pipeline crops every ground-truth mask to its own box (`data/mask_crops.py`);
here each RoI's bin centers are mapped into its matched box and that crop is sampled
bilinearly, as two matmuls per RoI (pure jnp, jit- and vmap-able).
"""

import jax
import jax.numpy as jnp


def mask_targets(gt_mask_crops, gt_boxes, rois, matched_gt, output_size: int = 28):
  """Mask-head targets: each RoI's matched gt mask, resampled onto the RoI's bins (jnp).

  Each of the output_size^2 bin centers of a RoI is mapped into its gt box frame and
  the gt crop is sampled bilinearly there (zeros outside the crop), then >= 0.5; so
  bins outside the gt box are 0. Pure jnp, usable under jit and vmap.

  Args:
    gt_mask_crops: [N, S, S] uint8 / float, gt masks cropped to their boxes.
    gt_boxes: [N, 4] float32, x1y1x2y2 (any frame, the same as `rois`).
    rois: [R, 4] float32, x1y1x2y2.
    matched_gt: [R] int32 index into the gt arrays.
    output_size: side O of the targets (static).

  Returns:
    targets: [R, output_size, output_size] float32 in {0., 1.}; all zeros where the
      matched gt box is degenerate.
  """

  crop_size = gt_mask_crops.shape[-1]
  crops = jnp.take(gt_mask_crops, matched_gt, axis=0).astype(jnp.float32)  # [R, S, S]
  gt = jnp.take(gt_boxes, matched_gt, axis=0).astype(jnp.float32)  # [R, 4]
  rois = rois.astype(jnp.float32)

  def axis_weights(roi_lo, roi_hi, gt_lo, gt_hi):
    """[R] box sides -> [R, O, S] interpolation weights from crop cells to RoI bins."""
    gt_len = gt_hi - gt_lo
    safe_len = jnp.where(gt_len > 0, gt_len, 1.0)
    # Bin j center in crop-cell coordinates: start + j * step. Written so that a RoI
    # equal to its gt box gives exact coordinates (ties at weight 0.5 stay ties).
    step = (roi_hi - roi_lo) / safe_len * (crop_size / output_size)
    start = (roi_lo - gt_lo) * (crop_size / safe_len) - 0.5 + 0.5 * step
    coords = start[:, None] + jnp.arange(output_size, dtype=jnp.float32) * step[:, None]
    # Linear interpolation as a tent: weight max(0, 1 - |coord - cell|), 0 off the crop.
    weights = jnp.maximum(
        0.0, 1.0 - jnp.abs(coords[..., None] - jnp.arange(crop_size, dtype=jnp.float32)))
    return jnp.where((gt_len > 0)[:, None, None], weights, 0.0)

  row_weights = axis_weights(rois[:, 1], rois[:, 3], gt[:, 1], gt[:, 3])  # [R, O, S]
  col_weights = axis_weights(rois[:, 0], rois[:, 2], gt[:, 0], gt[:, 2])  # [R, O, S]
  highest = jax.lax.Precision.HIGHEST  # no bf16/tf32 passes: values are thresholded at 0.5
  rows = jnp.einsum('rik,rkl->ril', row_weights, crops, precision=highest)
  values = jnp.einsum('ril,rjl->rij', rows, col_weights, precision=highest)
  return (values >= 0.5).astype(jnp.float32)
