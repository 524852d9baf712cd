"""Keypoints: heatmap targets and loss on the device, heatmaps to keypoints on the host.

Coordinates are continuous pixels of the frame they are in (Detectron2's convention:
COCO's integer pixel indices + 0.5 when read, - 0.5 when written back). Keypoints are
[..., K, 3]: x, y, visibility (COCO's 0 not labelled, 1 labelled but hidden, 2 visible;
v > 0 trains, as torchvision and Detectron2).

- `keypoint_targets`: each labelled keypoint to one cell of its RoI's H x H heatmap
  (torchvision `keypoints_to_heatmap`, Detectron2 `Keypoints.to_heatmap`).
- `keypoint_loss`: softmax cross-entropy over the H^2 cells of each target.
- `heatmaps_to_keypoints` (NumPy): each RoI heatmap resized bicubically to the box size,
  its argmax and score (torchvision `heatmaps_to_keypoints`).
- `flip_indices`, `flip_keypoints`: the horizontal flip with its left/right swap.

The device functions are pure jnp and import jax when called, so that importing this
module does not import jax and the data pipeline can use the host ones (as ops/masks.py).
"""

from typing import Sequence

import numpy as np


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
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
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
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  num, height, width, k = heatmap_logits.shape
  logits = jnp.moveaxis(heatmap_logits, -1, 1).reshape(num, k, height * width)
  target_logits = jnp.take_along_axis(logits, cells[..., None], axis=-1)[..., 0]
  per_keypoint = jax.nn.logsumexp(logits, axis=-1) - target_logits  # [S, K]
  total = jnp.sum(jnp.where(valid, per_keypoint, 0.0))
  if normalizer is None:
    return total / jnp.maximum(jnp.sum(valid), 1)
  return total / normalizer


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] float64: PyTorch's bicubic resize of one axis as a matrix.

  `F.interpolate(mode='bicubic', align_corners=False)` with a given size: source
  coordinate (i + 0.5) * in / out - 0.5 (not clamped), Keys' cubic convolution with
  A = -0.75 on the 4 nearest inputs, indices clamped to the edges.
  """
  a = -0.75
  src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  base = np.floor(src)
  t = src - base
  near = lambda d: ((a + 2) * d - (a + 3)) * d * d + 1  # |d| <= 1
  far = lambda d: ((a * d - 5 * a) * d + 8 * a) * d - 4 * a  # 1 < |d| < 2
  weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
  matrix = np.zeros((out_size, in_size))
  for tap in range(4):
    index = np.clip(base.astype(np.int64) - 1 + tap, 0, in_size - 1)
    np.add.at(matrix, (np.arange(out_size), index), weights[:, tap])
  return matrix


def heatmaps_to_keypoints(heatmaps: np.ndarray, boxes: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
  """Keypoints of each box from its heatmap logits (torchvision's definition).

  Each box's heatmaps are resized bicubically to ceil(box width) x ceil(box height)
  (sides clamped at 1 px); the argmax cell (d) gives the continuous coordinate
  x1 + (d + 0.5) * width / ceil(width), the resized logit there the score.

  Args:
    heatmaps: [n, K, H, H] float32 logits.
    boxes: [n, 4] float32 x1y1x2y2 in the frame the keypoints are wanted in.

  Returns:
    keypoints: [n, K, 3] float32 x, y, 1 (torchvision's visibility).
    scores: [n, K] float32.
  """
  heatmaps = np.asarray(heatmaps, np.float32)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  n, k, height, width = heatmaps.shape
  keypoints = np.zeros((n, k, 3), np.float32)
  scores = np.zeros((n, k), np.float32)
  for i, (x1, y1, x2, y2) in enumerate(boxes):
    box_w = max(float(x2 - x1), 1.0)
    box_h = max(float(y2 - y1), 1.0)
    out_w, out_h = int(np.ceil(np.float32(box_w))), int(np.ceil(np.float32(box_h)))
    rows, cols = bicubic_matrix(height, out_h), bicubic_matrix(width, out_w)
    resized = rows @ heatmaps[i].astype(np.float64) @ cols.T  # [K, out_h, out_w]
    resized = resized.astype(np.float32).reshape(k, -1)
    best = np.argmax(resized, axis=1)
    row, col = np.divmod(best, out_w)
    keypoints[i, :, 0] = (col + 0.5) * np.float32(box_w / out_w) + x1
    keypoints[i, :, 1] = (row + 0.5) * np.float32(box_h / out_h) + y1
    keypoints[i, :, 2] = 1.0
    scores[i] = resized[np.arange(k), best]
  return keypoints, scores


def flip_indices(names: Sequence[str]) -> np.ndarray:
  """[K] int: the keypoint each one becomes under a left-right flip.

  'left' and 'right' swapped in a name (`left_eye` <-> `right_eye`) name its partner;
  other keypoints (`nose`) stay. A name without its partner is an error.
  """
  names = [str(n) for n in names]
  index = {name: i for i, name in enumerate(names)}
  out = np.arange(len(names))
  for i, name in enumerate(names):
    partner = (name.replace('left', '\0').replace('right', 'left').replace('\0', 'right'))
    if partner != name:
      if partner not in index:
        raise ValueError(f'keypoint {name!r} has no {partner!r} to swap with when flipped')
      out[i] = index[partner]
  return out


def flip_keypoints(keypoints: np.ndarray, width: float, flip_map: np.ndarray) -> np.ndarray:
  """[N, K, 3] keypoints mirrored in an image of `width` (x' = width - x), left/right swapped.

  Unlabelled keypoints (v = 0) stay zeros.
  """
  keypoints = np.asarray(keypoints, np.float32)
  flipped = keypoints[:, flip_map].copy()
  flipped[..., 0] = np.where(flipped[..., 2] > 0, width - flipped[..., 0], 0.0)
  return flipped


def keypoints_in_original(heatmaps: np.ndarray, boxes: np.ndarray, transposed: bool,
                          resized_hw: tuple[int, int], original_hw: tuple[int, int]
                          ) -> tuple[np.ndarray, np.ndarray]:
  """One image's detections' keypoints in original pixels (torchvision's postprocess).

  Args:
    heatmaps: [n, K, H, H] float32 logits, canvas frame.
    boxes: [n, 4] float32 x1y1x2y2 detection boxes, canvas frame.
    transposed: the image lies transposed on its canvas.
    resized_hw: (height, width) of the resized image, canvas frame.
    original_hw: (height, width) of the original image.

  Returns:
    keypoints: [n, K, 3] float32 x, y, 1 in original pixels (continuous coordinates).
    scores: [n, K] float32 heatmap logits at the keypoints.
  """
  heatmaps = np.asarray(heatmaps, np.float32)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  resized_h, resized_w = resized_hw
  if transposed:  # back to the image's own orientation first
    heatmaps, boxes = np.swapaxes(heatmaps, -1, -2), boxes[:, [1, 0, 3, 2]]
    resized_h, resized_w = resized_w, resized_h
  keypoints, scores = heatmaps_to_keypoints(heatmaps, boxes)
  height, width = original_hw
  keypoints[..., 0] *= np.float32(width) / np.float32(resized_w)
  keypoints[..., 1] *= np.float32(height) / np.float32(resized_h)
  return keypoints, scores
