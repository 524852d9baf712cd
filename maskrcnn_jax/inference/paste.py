"""Mask-head outputs pasted into the original image (host side, NumPy).

`paste_mask` maps one M x M probability map over its box into the image and thresholds
it, as Detectron2 (`method='bilinear'`: each pixel center sampled in the box,
`grid_sample` with zeros outside) or torchvision (`'torchvision'`: the box expanded by
(M + 2) / M and truncated, the mask padded by one and resized, in torch's float32
order). Only the pixels the box can reach are computed. The per-axis tap functions
are shared with evaluation's region paste (evaluation/region_masks.py).
"""

from typing import Sequence

import numpy as np

from maskrcnn_jax.data import interpolation


def _ranges(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Concatenated `arange(start, stop)` of n ranges: positions [T] int64, offsets [n + 1]
  int64 (range k is positions[offsets[k]:offsets[k + 1]]; empty where stop <= start)."""
  lengths = np.maximum(stops - starts, 0)
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  return np.arange(offsets[-1]) + np.repeat(starts - offsets[:-1], lengths), offsets


def bilinear_paste_coords(lo: np.ndarray, hi: np.ndarray, mask_size: int, length: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Detectron2's paste along one image axis, for n boxes: the pixels it computes.

  Args:
    lo, hi: [n] float64 box sides on this axis (x1, x2 or y1, y2), image pixels.
    mask_size: mask cells on this axis.
    length: image pixels on this axis.

  Returns:
    start: [n] int64 first pixel of each box's range.
    offsets: [n + 1] int64; box k's pixels are start[k] + (0 .. offsets[k + 1] -
      offsets[k] - 1): none for a degenerate (hi <= lo) or non-finite box.
    coords: [T] float64 those pixels' centers in mask-cell coordinates
      (grid_sample, align_corners=False), concatenated.
  """
  valid = (hi > lo) & np.isfinite(lo) & np.isfinite(hi)
  lo, hi = np.where(valid, lo, 0.0), np.where(valid, hi, 1.0)
  # Outside the box grown by one mask cell every sample reads only zero padding.
  margin = (hi - lo) / mask_size
  start = np.clip(np.floor(lo - margin), 0, length).astype(np.int64)
  stop = np.where(valid, np.clip(np.ceil(hi + margin) + 1, 0, length), 0).astype(np.int64)
  positions, offsets = _ranges(start, stop)
  lengths = np.diff(offsets)
  scale = np.repeat(mask_size / (hi - lo), lengths)
  coords = (positions + 0.5 - np.repeat(lo, lengths)) * scale - 0.5
  return start, offsets, coords


def _paste_bilinear(mask_probs: np.ndarray, box: np.ndarray, height: int, width: int,
                    threshold: float) -> np.ndarray:
  """Detectron2 `paste_masks_in_image` for one mask ([M, M] -> [height, width] bool)."""
  out = np.zeros((height, width), bool)
  (row0,), _, ys = bilinear_paste_coords(box[1:2], box[3:4], mask_probs.shape[0], height)
  (col0,), _, xs = bilinear_paste_coords(box[0:1], box[2:3], mask_probs.shape[1], width)
  if len(ys) and len(xs):
    out[row0:row0 + len(ys), col0:col0 + len(xs)] = (
        interpolation.bilinear_sample(mask_probs, ys, xs) >= threshold)
  return out


def torchvision_paste_taps(lo: np.ndarray, hi: np.ndarray, mask_size: int, length: int
                           ) -> tuple[np.ndarray, ...]:
  """torchvision's paste (`paste_masks_in_image`, padding 1) along one image axis, for
  n boxes: the pixels it computes and their taps into the mask padded by 1.

  Args:
    lo, hi: [n] float32 box sides on this axis (x1, x2 or y1, y2), image pixels.
    mask_size: M, the side of the (square) mask before padding.
    length: image pixels on this axis.

  Returns:
    start: [n] int64 first pixel of each box's range.
    offsets: [n + 1] int64; box k's pixels are start[k] + (0 .. offsets[k + 1] -
      offsets[k] - 1) (none for a non-finite box).
    index0, index1: [T] int64 rows (columns) of the [M + 2, M + 2] padded mask.
    weight0, weight1: [T] float32, concatenated over the boxes.
  """
  # expand_boxes, in float32 as torch, then truncation toward zero (`.to(torch.int64)`).
  scale = np.float32((mask_size + 2) / mask_size)
  half = (hi - lo) * np.float32(0.5) * scale
  center = (hi + lo) * np.float32(0.5)
  lo_expanded, hi_expanded = center - half, center + half
  valid = np.isfinite(lo_expanded) & np.isfinite(hi_expanded)
  box0 = np.where(valid, lo_expanded, 0).astype(np.int64)
  box1 = np.where(valid, hi_expanded, -1).astype(np.int64)
  # paste_mask_in_image: resize to the integer box (+1), copy its part inside the image.
  box_length = np.maximum(box1 - box0 + 1, 1)
  start = np.clip(box0, 0, length)
  positions, offsets = _ranges(start, np.where(valid, np.minimum(box1 + 1, length), 0))
  lengths = np.diff(offsets)
  taps = interpolation.torch_bilinear_taps(mask_size + 2, positions - np.repeat(box0, lengths),
                                           np.repeat(box_length, lengths))
  return (start, offsets) + taps


def torchvision_region(mask_probs: np.ndarray, box: np.ndarray, height: int, width: int,
                       threshold: float) -> tuple[np.ndarray, int, int]:
  """torchvision `paste_masks_in_image` (padding 1) for one mask, over the pixels it
  computes: ([h, w] bool thresholded > threshold, row0, col0) of the image."""
  size = mask_probs.shape[-1]
  padded = np.pad(mask_probs.astype(np.float32), 1)
  box = box.astype(np.float32)
  (row0,), _, r0, r1, wr0, wr1 = torchvision_paste_taps(box[1:2], box[3:4], size, height)
  (col0,), _, c0, c1, wc0, wc1 = torchvision_paste_taps(box[0:1], box[2:3], size, width)
  if not (len(r0) and len(c0)):
    return np.zeros((0, 0), bool), 0, 0
  values = interpolation.separable_interpolate(padded, (r0, r1, wr0, wr1), (c0, c1, wc0, wc1))
  return values > np.float32(threshold), int(row0), int(col0)


def _paste_torchvision(mask_probs: np.ndarray, box: np.ndarray, height: int, width: int,
                       threshold: float) -> np.ndarray:
  """`torchvision_region` placed into an [height, width] bool image."""
  out = np.zeros((height, width), bool)
  region, row0, col0 = torchvision_region(mask_probs, box, height, width, threshold)
  out[row0:row0 + region.shape[0], col0:col0 + region.shape[1]] = region
  return out


def paste_mask(mask_probs: np.ndarray, box: Sequence[float], height: int, width: int,
               threshold: float = 0.5, method: str = 'bilinear') -> np.ndarray:
  """Pastes one mask-head output into the image (host side, NumPy).

  Only the pixels near the box are computed; the rest of the image is False.

  Args:
    mask_probs: [M, M] float probabilities over `box`.
    box: [4] float, x1y1x2y2 pixels of the target image.
    height: target image height.
    width: target image width.
    threshold: probability threshold.
    method: 'bilinear': Detectron2 `paste_masks_in_image` (pixel centers mapped into the
      box, `grid_sample` with align_corners=False and zeros outside the mask, then
      >= threshold); a degenerate box pastes nothing. 'torchvision':
      torchvision.models.detection.roi_heads.paste_mask_in_image (box expanded by
      (M + 2) / M and truncated to integers, mask padded by 1, bilinear resize to the
      integer box size + 1, float32 as torch), then > threshold.

  Returns:
    mask: [height, width] bool.
  """
  mask_probs = np.asarray(mask_probs)
  box = np.asarray(box, dtype=np.float64)
  if mask_probs.ndim != 2 or box.shape != (4,):
    raise ValueError(
        f'expected mask_probs [M, M] and box [4]; got {mask_probs.shape} and {box.shape}')
  if method == 'bilinear':
    return _paste_bilinear(mask_probs, box, height, width, threshold)
  if method == 'torchvision':
    return _paste_torchvision(mask_probs, box, height, width, threshold)
  raise ValueError(f"method must be 'bilinear' or 'torchvision'; got {method!r}")
