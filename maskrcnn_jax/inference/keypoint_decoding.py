"""Keypoint heatmaps to keypoints in original pixels (host side; torchvision's definition).

Each detection's K heatmap logits are resized bicubically to its box, and each
keypoint is the argmax cell's center, its score the resized logit there; then the canvas
transpose is undone and the coordinates are scaled to the original image.
"""

import numpy as np


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
