"""Image and box transforms shared by the input pipeline and the Predictor (host side, NumPy).

Resizing follows torchvision's GeneralizedRCNNTransform: one scale from the image sides,
output sides floored (`F.interpolate(..., recompute_scale_factor=True)`), bilinear
interpolation with half-pixel centers and no antialiasing, boxes scaled per axis by
new_size / old_size. `resize_image` is that resize exactly, in float32 (the torchvision
preset); `resize_uint8` is the same interpolation through OpenCV on uint8 pixels (the
default: ~30x faster, within one gray level). `data.resize_backend` chooses one for the
pipeline and the Predictor alike, so evaluation and the Predictor see the same pixels.

Canvases: every image is padded at the bottom/right onto one of at most `MAX_CANVASES`
fixed landscape canvases (`data.image_size`, the largest, plus `data.extra_canvases`);
with `data.transpose_portrait` a portrait image lies transposed (rows <-> columns) on
them. `choose_canvas` picks the canvas from the original image size.
"""

import math
from typing import NamedTuple

import cv2
import ml_collections
import numpy as np
from PIL import Image

from maskrcnn_jax import image_info
from maskrcnn_jax.data import interpolation

MAX_CANVASES = 4  # compiled input shapes
# Resize modes driven by a shorter-side target (data.min_size / data.train_min_sizes).
SHORTER_SIDE_MODES = ('shorter_side', 'shortest_edge')


class Canvas(NamedTuple):
  """The padded frame an image goes onto."""
  index: int  # 0: data.image_size; i > 0: data.extra_canvases[i - 1]
  height: int
  width: int
  transpose: bool  # the image lies transposed (a portrait on a landscape canvas)


def canvas_sizes(data_config: ml_collections.ConfigDict) -> tuple[tuple[int, int], ...]:
  """(data.image_size,) + data.extra_canvases as (height, width) ints, validated."""
  main = tuple(int(v) for v in data_config.image_size)
  sizes = (main,) + tuple(tuple(int(v) for v in size) for size in data_config.extra_canvases)
  if len(sizes) > MAX_CANVASES:
    raise ValueError(f'data.extra_canvases: at most {MAX_CANVASES} canvases in all with '
                     f'data.image_size; got {len(sizes)}')
  for key, size in zip(['data.image_size'] + ['data.extra_canvases'] * (len(sizes) - 1), sizes):
    if len(size) != 2 or any(side <= 0 or side % 64 for side in size):
      raise ValueError(f'{key}: canvas sides must be positive multiples of 64; got {size}')
    if size[0] > main[0] or size[1] > main[1]:
      raise ValueError(f'{key}: canvas {size} does not fit inside data.image_size {main}')
  if len(set(sizes)) != len(sizes):
    raise ValueError(f'data.extra_canvases: repeated canvas in {sizes}')
  if data_config.large_scale_jitter and (len(sizes) > 1 or data_config.transpose_portrait):
    raise ValueError('data.large_scale_jitter crops to the one data.image_size canvas: set '
                     'data.extra_canvases = () and data.transpose_portrait = False')
  return sizes


def largest_resize(height: int, width: int, data_config: ml_collections.ConfigDict,
                   train: bool) -> tuple[int, int]:
  """The largest (new_height, new_width) the mode can give an original height x width.

  Evaluation: the test resize (data.min_size). Training in shorter_side mode: the largest
  of data.train_min_sizes (data.min_size when empty).
  """
  cfg = data_config
  min_size = cfg.min_size
  if train and cfg.resize_mode in SHORTER_SIDE_MODES and len(cfg.train_min_sizes):
    min_size = max(cfg.train_min_sizes)
  return resize_shape(height, width, cfg.resize_mode, min_size, cfg.max_size)[:2]


def choose_canvas(height: int, width: int, data_config: ml_collections.ConfigDict,
                  train: bool) -> Canvas:
  """The canvas for an ORIGINAL height x width image.

  Transposes portraits (height > width) when data.transpose_portrait, then takes the
  smallest-area canvas holding `largest_resize` (in the canvas frame). Training with
  data.large_scale_jitter: always the square data.image_size, untransposed (the crop
  fits it).
  """
  sizes = canvas_sizes(data_config)
  if train and data_config.large_scale_jitter:
    return Canvas(0, *sizes[0], False)
  transpose = bool(data_config.transpose_portrait) and height > width
  new_h, new_w = largest_resize(height, width, data_config, train)
  if transpose:
    new_h, new_w = new_w, new_h
  fits = [(h * w, i) for i, (h, w) in enumerate(sizes) if new_h <= h and new_w <= w]
  if not fits:
    raise ValueError(f'an image of {height} x {width} resizes to {new_h} x {new_w} '
                     f'{"(transposed) " if transpose else ""}and fits no canvas of '
                     f'data.image_size / data.extra_canvases {sizes}')
  index = min(fits)[1]
  return Canvas(index, *sizes[index], transpose)


def resize_shape(height: int, width: int, mode: str, min_size: int,
                 max_size: int) -> tuple[int, int, float]:
  """The resized image size and the scale that gives it.

  'shorter_side' (torchvision): scale = min(min_size / shorter side, max_size / longer
  side). 'square' (TPU style): scale = max_size / longer side, so the longer side becomes
  max_size. Float64 arithmetic as torchvision's eager path; each side is
  floor(side * scale). 'shortest_edge' (Detectron2's ResizeShortestEdge): the same scale,
  but each side rounded to nearest, computed in Detectron2's order (shorter side set to
  min_size, then both sides scaled down if the longer exceeds max_size).

  Args:
    height: original image height.
    width: original image width.
    mode: 'shorter_side' | 'shortest_edge' | 'square'.
    min_size: shorter-side target (not 'square').
    max_size: longer-side cap, or square side ('square').

  Returns:
    (new_height, new_width, scale).
  """
  if height <= 0 or width <= 0:
    raise ValueError(f'image size must be positive; got {height} x {width}')
  shorter, longer = min(height, width), max(height, width)
  if mode == 'shorter_side':
    scale = min(min_size / shorter, max_size / longer)
  elif mode == 'shortest_edge':
    scale = min_size / shorter
    new_h, new_w = (min_size, scale * width) if height < width else (scale * height, min_size)
    if max(new_h, new_w) > max_size:
      cap = max_size / max(new_h, new_w)
      new_h, new_w, scale = new_h * cap, new_w * cap, scale * cap
    return int(new_h + 0.5), int(new_w + 0.5), scale
  elif mode == 'square':
    scale = max_size / longer
  else:
    raise ValueError("resize mode must be 'shorter_side', 'shortest_edge' or 'square'; "
                     f'got {mode!r}')
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
  cols0, cols1, col_w0, col_w1 = interpolation.torch_bilinear_taps(
      width, np.arange(new_width), new_width)
  rows = (col_w0[None, :, None] * image[:, cols0]
          + col_w1[None, :, None] * image[:, cols1])  # [H, nw, C]
  rows0, rows1, row_w0, row_w1 = interpolation.torch_bilinear_taps(
      height, np.arange(new_height), new_height)
  return row_w0[:, None, None] * rows[rows0] + row_w1[:, None, None] * rows[rows1]


def resize_uint8(image: np.ndarray, new_height: int, new_width: int) -> np.ndarray:
  """Bilinear resize of uint8 pixels through OpenCV (`cv2.INTER_LINEAR`).

  The interpolation of `resize_image` (half-pixel centers, no antialiasing) in OpenCV's
  fixed point, rounded to uint8: within one gray level of it.

  Args:
    image: [H, W, 3] uint8.
    new_height: output height.
    new_width: output width.

  Returns:
    [new_height, new_width, 3] uint8.
  """
  if image.shape[:2] == (new_height, new_width):
    return image
  return cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR)


def image_dtype(data_config: ml_collections.ConfigDict) -> type:
  """The dtype images travel in: uint8, or float32 with data.resize_backend = 'torch'."""
  return np.float32 if data_config.resize_backend == 'torch' else np.uint8


def resize_pixels(image: np.ndarray, new_height: int, new_width: int,
                  data_config: ml_collections.ConfigDict) -> np.ndarray:
  """[H, W, 3] uint8 -> [new_height, new_width, 3] in `image_dtype`, by data.resize_backend."""
  if data_config.resize_backend == 'opencv':
    return resize_uint8(image, new_height, new_width)
  if data_config.resize_backend == 'torch':
    return resize_image(image, new_height, new_width)
  if data_config.resize_backend == 'pillow':
    return resize_pillow(image, new_height, new_width)
  raise ValueError(f"data.resize_backend must be 'opencv', 'torch' or 'pillow'; got "
                   f'{data_config.resize_backend!r}')


def resize_pillow(image: np.ndarray, new_height: int, new_width: int) -> np.ndarray:
  """Pillow's bilinear resize of uint8 pixels, as Detectron2's ResizeTransform applies it.

  Pillow antialiases when shrinking (its filter support grows with the scale), unlike
  OpenCV and torchvision; Detectron2's evaluation sees these pixels.

  Args:
    image: [H, W, 3] uint8.

  Returns:
    [new_height, new_width, 3] uint8.
  """
  if image.shape[:2] == (new_height, new_width):
    return image
  resized = Image.fromarray(np.ascontiguousarray(image)).resize(
      (new_width, new_height), Image.Resampling.BILINEAR)
  return np.asarray(resized)


def _is_cv2_image(image: np.ndarray) -> bool:
  """[H, W, 3] uint8 | float32: OpenCV flips and transposes it ~10x faster than NumPy copies."""
  return image.ndim == 3 and image.shape[2] == 3 and image.dtype in (np.uint8, np.float32)


def transpose_image(image: np.ndarray) -> np.ndarray:
  """[H, W, ...] -> [W, H, ...], contiguous (rows <-> columns)."""
  if _is_cv2_image(image):
    return cv2.transpose(image)
  return np.ascontiguousarray(np.swapaxes(image, 0, 1))


def transpose_boxes(boxes: np.ndarray) -> np.ndarray:
  """[..., 4] x1y1x2y2 -> y1x1y2x2: the boxes of the transposed image (an involution)."""
  return np.asarray(boxes)[..., [1, 0, 3, 2]]


def to_original_orientation(boxes: np.ndarray, mask_probs: np.ndarray,
                            info: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
  """Undoes the canvas transpose on one image's detections.

  Args:
    boxes: [n, 4] float32 x1y1x2y2 in the canvas frame.
    mask_probs: [n, M, M] float mask probabilities over each box, canvas frame.
    info: [5] the image's image_info row.

  Returns:
    boxes [n, 4], mask_probs [n, M, M] and (resized height, resized width), all in the
    image's own orientation: exactly what the untransposed image would have had.
  """
  resized = (int(image_info.resized_height(info)), int(image_info.resized_width(info)))
  if not image_info.transposed(info):
    return boxes, mask_probs, resized
  return (transpose_boxes(boxes), np.swapaxes(mask_probs, -1, -2),
          (resized[1], resized[0]))


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
  """Mirrors [H, W, ...] left-right, contiguous."""
  if _is_cv2_image(image):
    return cv2.flip(image, 1)
  return np.ascontiguousarray(image[:, ::-1])


def flip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
  """Mirrors [N, 4] x1y1x2y2 boxes in an image of `width`: x1' = width - x2."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  return np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]],
                  axis=-1)
