"""Anchor grids for the RPN, computed on the host with NumPy once per image size.

Order and values match torchvision's AnchorGenerator (round_base=True) or Detectron2's
DefaultAnchorGenerator with offset 0 (round_base=False): anchors are ordered
(y, x, ratio) with ratio fastest, the order of an NHWC head output reshaped to [H*W*A].
"""

from collections.abc import Sequence

import numpy as np


def _base_anchors(size: float, aspect_ratios: Sequence[float], round_base: bool) -> np.ndarray:
  """Anchors centered at (0, 0), one per aspect ratio (ratio = h / w).

  Returns:
    [len(aspect_ratios), 4] float32, x1y1x2y2.
  """
  ratios = np.asarray(aspect_ratios, np.float32)
  if round_base:
    # torchvision's float32 arithmetic, then base_anchors.round() (half to even).
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1) / h_ratios
    widths = w_ratios * np.float32(size)
    heights = h_ratios * np.float32(size)
    base = np.stack([-widths, -heights, widths, heights], axis=1) / np.float32(2)
    return np.round(base).astype(np.float32)
  # Detectron2's float64 arithmetic: w = sqrt(size^2 / r), h = r * w.
  widths = np.sqrt(float(size) ** 2 / ratios.astype(np.float64))
  heights = ratios.astype(np.float64) * widths
  return np.stack([-widths / 2, -heights / 2, widths / 2, heights / 2],
                  axis=1).astype(np.float32)


def level_anchors(feature_height: int, feature_width: int, stride: int | tuple[int, int],
                  size: float, aspect_ratios: Sequence[float],
                  round_base: bool = False) -> np.ndarray:
  """All anchors of one feature level (host side, NumPy).

  Args:
    feature_height, feature_width: feature map size H, W.
    stride: pixels per feature cell, or (stride_y, stride_x); cell (y, x) is centered
      at (x * stride_x, y * stride_y).
    size: anchor side for ratio 1 (sqrt of the area), in pixels.
    aspect_ratios: A ratios h / w: h = size * sqrt(r), w = size / sqrt(r).
    round_base: round the base anchors to integers (torchvision) or not (Detectron2).

  Returns:
    [H * W * A, 4] float32 x1y1x2y2 anchors, ordered (y, x, ratio) with ratio fastest.
  """
  stride_y, stride_x = stride if isinstance(stride, tuple) else (stride, stride)
  base = _base_anchors(size, aspect_ratios, round_base)  # [A, 4]
  shift_x = np.arange(feature_width, dtype=np.float32) * np.float32(stride_x)
  shift_y = np.arange(feature_height, dtype=np.float32) * np.float32(stride_y)
  shift_y, shift_x = np.meshgrid(shift_y, shift_x, indexing='ij')  # [H, W]
  shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1).reshape(-1, 1, 4)
  return (shifts + base[None]).reshape(-1, 4)


def fpn_anchors(image_height: int, image_width: int, min_level: int = 2,
                max_level: int = 6, sizes: Sequence[float] = (32, 64, 128, 256, 512),
                aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                round_base: bool = False,
                stride_from_image: bool = False) -> list[np.ndarray]:
  """Anchors of every FPN level min_level..max_level (host side, NumPy).

  Level l has stride 2**l, feature size ceil(image / 2**l) and anchor size
  sizes[l - min_level].

  Args:
    image_height, image_width: (padded) input image size in pixels.
    min_level, max_level: pyramid levels, inclusive.
    sizes: one anchor size per level.
    aspect_ratios: ratios h / w shared by all levels.
    round_base: see `level_anchors`.
    stride_from_image: per axis stride = image size // feature size, as torchvision's
      AnchorGenerator; it differs from 2**l where the image is not a multiple of 2**l
      (a 480-pixel side gives P6 a stride of 60).

  Returns:
    list over levels of [H_l * W_l * A, 4] float32 anchors.
  """
  if len(sizes) != max_level - min_level + 1:
    raise ValueError(f'need one anchor size per level {min_level}..{max_level}, got {sizes}')
  anchors = []
  for level, size in zip(range(min_level, max_level + 1), sizes):
    height, width = -(-image_height // 2**level), -(-image_width // 2**level)
    stride = (image_height // height, image_width // width) if stride_from_image else 2**level
    anchors.append(level_anchors(height, width, stride, size, aspect_ratios, round_base))
  return anchors
