"""Keypoint-head targets and loss on the device (Keypoint R-CNN, the paper's section 5).

Coordinates are continuous pixels of the frame they are in (Detectron2's convention:
COCO's integer pixel indices + 0.5). Keypoints are [..., K, 3]: x, y, visibility (COCO's
0 not labelled, 1 labelled but hidden, 2 visible; v > 0 trains, as torchvision and
Detectron2).

- `keypoint_targets`: each labelled keypoint to one cell of its RoI's H x H heatmap
  (torchvision `keypoints_to_heatmap`, Detectron2 `Keypoints.to_heatmap`).
- `keypoint_loss`: softmax cross-entropy over the H^2 cells of each target.
"""

import jax
import jax.numpy as jnp


def keypoint_targets(keypoints, rois, heatmap_size: int):
  """The heatmap cell of each keypoint in its RoI.

  Args:
    keypoints: [R, K, 3] float32 x, y, visibility of each RoI's matched gt.
    rois: [R, 4] float32 x1y1x2y2, same frame.
    heatmap_size: H.

  Returns:
    cells: [R, K] int32 flat index y * H + x in 0..H^2 - 1 (0 where not valid).
    valid: [R, K] bool: labelled (v > 0), inside the RoI and the RoI not empty. A
      keypoint exactly on the right (bottom) edge goes to the last column (row).
  """
  x1, y1, x2, y2 = (rois[:, i:i + 1] for i in range(4))
  nonempty = (x2 > x1) & (y2 > y1)
  scale_x = heatmap_size / jnp.where(nonempty, x2 - x1, 1.0)
  scale_y = heatmap_size / jnp.where(nonempty, y2 - y1, 1.0)
  x, y = keypoints[..., 0], keypoints[..., 1]
  col = jnp.floor((x - x1) * scale_x).astype(jnp.int32)
  row = jnp.floor((y - y1) * scale_y).astype(jnp.int32)
  col = jnp.where(x == x2, heatmap_size - 1, col)
  row = jnp.where(y == y2, heatmap_size - 1, row)
  inside = (col >= 0) & (row >= 0) & (col < heatmap_size) & (row < heatmap_size)
  valid = inside & (keypoints[..., 2] > 0) & nonempty
  return jnp.where(valid, row * heatmap_size + col, 0).astype(jnp.int32), valid


def keypoint_loss(heatmap_logits, cells, valid, normalizer: float | None = None):
  """Softmax cross-entropy over each keypoint's H x H cells.

  Args:
    heatmap_logits: [S, H, H, K] float32.
    cells: [S, K] int32 target cells (`keypoint_targets`).
    valid: [S, K] bool; others do not reach the loss.
    normalizer: None: divide by the number of valid targets (Detectron2's
      normalize-by-visible, torchvision's mean); else by this constant.

  Returns:
    Scalar float32; 0 without valid targets.
  """
  num, height, width, k = heatmap_logits.shape
  logits = jnp.moveaxis(heatmap_logits, -1, 1).reshape(num, k, height * width)
  target_logits = jnp.take_along_axis(logits, cells[..., None], axis=-1)[..., 0]
  per_keypoint = jax.nn.logsumexp(logits, axis=-1) - target_logits  # [S, K]
  total = jnp.sum(jnp.where(valid, per_keypoint, 0.0))
  if normalizer is None:
    return total / jnp.maximum(jnp.sum(valid), 1)
  return total / normalizer
