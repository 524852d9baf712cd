"""Image and box transforms shared by the input pipeline and the Predictor (host side, NumPy).

Resizing follows torchvision's GeneralizedRCNNTransform: one scale from the image sides,
output sides floored (`F.interpolate(..., recompute_scale_factor=True)`), bilinear
interpolation with half-pixel centers and no antialiasing, boxes scaled per axis by
new_size / old_size.
"""

import math
from typing import Sequence

import numpy as np

from maskrcnn_jax.ops import masks as mask_ops


def resize_shape(height: int, width: int, mode: str, min_size: int,
                 max_size: int) -> tuple[int, int, float]:
  """The resized image size and the scale that gives it.

  'shorter_side' (Detectron2 / torchvision): scale = min(min_size / shorter side,
  max_size / longer side). 'square' (TPU style): scale = max_size / longer side, so the
  longer side becomes max_size. Float64 arithmetic as torchvision's eager path; each side
  is floor(side * scale).

  Args:
    height: original image height.
    width: original image width.
    mode: 'shorter_side' | 'square'.
    min_size: shorter-side target ('shorter_side' only).
    max_size: longer-side cap ('shorter_side') or square side ('square').

  Returns:
    (new_height, new_width, scale).
  """
  if height <= 0 or width <= 0:
    raise ValueError(f'image size must be positive; got {height} x {width}')
  shorter, longer = min(height, width), max(height, width)
  if mode == 'shorter_side':
    scale = min(min_size / shorter, max_size / longer)
  elif mode == 'square':
    scale = max_size / longer
  else:
    raise ValueError(f"resize mode must be 'shorter_side' or 'square'; got {mode!r}")
  return math.floor(height * scale), math.floor(width * scale), scale


def resize_image(image: np.ndarray, new_height: int, new_width: int) -> np.ndarray:
  """Bilinear resize, exactly `F.interpolate(mode='bilinear', align_corners=False)`.

  Half-pixel centers, no antialiasing, the scale recomputed from the sizes, float32
  arithmetic; uint8 input is converted to float32 first.

  Args:
    image: [H, W, C] uint8 | float32.
    new_height: output height.
    new_width: output width.

  Returns:
    [new_height, new_width, C] float32.
  """
  image = np.asarray(image, dtype=np.float32)
  height, width = image.shape[:2]
  cols0, cols1, col_w0, col_w1 = mask_ops.torch_bilinear_taps(
      width, np.arange(new_width), new_width)
  rows = (col_w0[None, :, None] * image[:, cols0]
          + col_w1[None, :, None] * image[:, cols1])  # [H, nw, C]
  rows0, rows1, row_w0, row_w1 = mask_ops.torch_bilinear_taps(
      height, np.arange(new_height), new_height)
  return row_w0[:, None, None] * rows[rows0] + row_w1[:, None, None] * rows[rows1]


def normalize_image(image: np.ndarray, mean_rgb: Sequence[float],
                    std_rgb: Sequence[float]) -> np.ndarray:
  """(image - mean) / std per channel: [h, w, 3] float32 on 0..255 -> [h, w, 3] float32."""
  mean = np.asarray(mean_rgb, np.float32)
  std = np.asarray(std_rgb, np.float32)
  return (np.asarray(image, np.float32) - mean) / std


def pad_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Zero-pads [h, w, C] at the bottom and right to [height, width, C]."""
  h, w = image.shape[:2]
  if h > height or w > width:
    raise ValueError(f'image of {h} x {w} does not fit the padded size {height} x {width}')
  out = np.zeros((height, width) + image.shape[2:], image.dtype)
  out[:h, :w] = image
  return out


def resize_boxes(boxes: np.ndarray, height: int, width: int, new_height: int,
                 new_width: int) -> np.ndarray:
  """Scales [N, 4] x1y1x2y2 boxes by (new_width / width, new_height / height), float32."""
  ratios = np.array([new_width / width, new_height / height] * 2, np.float32)
  return np.asarray(boxes, np.float32).reshape(-1, 4) * ratios


def flip_image(image: np.ndarray) -> np.ndarray:
  """Mirrors [H, W, ...] left-right."""
  return np.ascontiguousarray(image[:, ::-1])


def flip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
  """Mirrors [N, 4] x1y1x2y2 boxes in an image of `width`: x1' = width - x2."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  return np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]],
                  axis=-1)
