"""Two-tap interpolation along image axes (host side, NumPy): the arithmetic that resizes
images, crops ground-truth masks and pastes predicted masks.

Coordinates are pixel-index coordinates: pixel i covers [i, i + 1) and its center is
i + 0.5 in continuous pixels, i in these. `linear_taps` / `bilinear_sample` read zeros
outside the array, per tap (as `F.grid_sample(..., padding_mode='zeros',
align_corners=False)`); `torch_bilinear_taps` is `F.interpolate(mode='bilinear')`'s
clamped taps in PyTorch's float32 order.
"""

from typing import Sequence

import numpy as np


def linear_taps(coords: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Linear interpolation taps along one axis, zero weight outside [0, size).

  Args:
    coords: [n] float64 sample positions in pixel-index coordinates.
    size: length of the sampled axis.

  Returns:
    indices: [n, 2] int64 in [0, size), safe to gather.
    weights: [n, 2] float64.
  """
  lower = np.floor(coords)
  frac = coords - lower
  indices = lower.astype(np.int64)[:, None] + np.array([0, 1])
  weights = np.stack([1.0 - frac, frac], axis=-1)
  weights = np.where((indices >= 0) & (indices < size), weights, 0.0)
  return np.clip(indices, 0, size - 1), weights


def bilinear_sample(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
  """Samples `image` [H, W] on the grid ys [h] x xs [w] -> [h, w] float64 (zeros outside).

  Reads only the window of `image` that the taps touch (copied once, row-major), and
  gathers rows before columns.
  """
  rows, row_weights = linear_taps(ys, image.shape[0])
  cols, col_weights = linear_taps(xs, image.shape[1])
  top, left = rows.min(), cols.min()
  window = np.ascontiguousarray(image[top:rows.max() + 1, left:cols.max() + 1])
  rows, cols = rows - top, cols - left
  out = np.zeros((len(ys), len(xs)))
  for a in range(2):
    band = window[rows[:, a]]
    for b in range(2):
      taps = band[:, cols[:, b]].astype(np.float64)
      out += row_weights[:, a, None] * col_weights[None, :, b] * taps
  return out


def torch_bilinear_taps(in_size: int, out_indices: np.ndarray, out_size: int | np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Taps of `F.interpolate(mode='bilinear', align_corners=False)` along one axis.

  Host side (NumPy); also what data.transforms.resize_image resizes images with.
  float32 arithmetic in the order of PyTorch's CPU kernel (`compute_source_index_and_lambda`).

  Args:
    in_size: input length.
    out_indices: [n] int64 output positions to compute.
    out_size: full output length, or [n] int64 one per position (n resizes at once).

  Returns:
    index0, index1: [n] int64; lambda0, lambda1: [n] float32.
  """
  same = np.asarray(out_size) == in_size  # torch copies: one tap of weight 1
  if np.all(same):
    ones = np.ones(len(out_indices), np.float32)
    return out_indices, out_indices, ones, np.zeros_like(ones)
  scale = np.float32(in_size) / np.asarray(out_size, np.float32)
  src = scale * (out_indices.astype(np.float32) + np.float32(0.5)) - np.float32(0.5)
  src = np.maximum(src, np.float32(0))
  index0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  lambda1 = np.clip(src - index0.astype(np.float32), np.float32(0), np.float32(1))
  index1 = np.where(index0 < in_size - 1, index0 + 1, index0)
  lambda0 = np.float32(1) - lambda1
  if np.any(same):
    index0 = np.where(same, out_indices, index0)
    index1 = np.where(same, out_indices, index1)
    lambda0 = np.where(same, np.float32(1), lambda0)
    lambda1 = np.where(same, np.float32(0), lambda1)
  return index0, index1, lambda0, lambda1


def separable_interpolate(image: np.ndarray, rows: Sequence[np.ndarray],
                          cols: Sequence[np.ndarray]) -> np.ndarray:
  """Two-tap interpolation of [R, C] `image`: columns first, then rows -> [h, w].

  rows: (index0, index1, weight0, weight1), each [h]; cols the same, each [w]. Pixel
  (i, j) is (image[r0, c0] * wc0 + image[r0, c1] * wc1) * wr0 + (the same on r1) * wr1,
  torchvision's paste arithmetic in its order; the column pass is done once per image
  row, not once per output row.
  """
  r0, r1, wr0, wr1 = rows
  c0, c1, wc0, wc1 = cols
  by_row = image[:, c0] * wc0  # [R, w]
  by_row += image[:, c1] * wc1
  values = by_row.take(r0, axis=0)  # [h, w]
  values *= wr0[:, None]
  lower = by_row.take(r1, axis=0)
  lower *= wr1[:, None]
  values += lower
  return values
