"""Where one image goes on its canvas: resize, flip, crop (host side, NumPy, no pixels).

`draw_geometry` decides, from the original size, the config and (for training) a
NumPy generator, a `Geometry`; data/examples.py applies it to the pixels, boxes and masks.

- Evaluation (no generator): the test resize (`data.resize_mode`, `data.min_size`), no
  flip, no crop.
- Training, scale augmentation (Detectron2's 1x): the shorter side drawn uniformly from
  `data.train_min_sizes`, longer side capped at `data.max_size` ('shorter_side' mode).
- Training, large-scale jitter (`data.large_scale_jitter`; Detectron2's ResizeScale +
  FixedSizeCrop, TF Model Garden's `resize_and_crop_image`): s ~ U(data.lsj_scale_range),
  the image scaled to fit (s * canvas height) x (s * canvas width), sides rounded; where
  it exceeds the canvas, a window of the canvas size at a uniformly drawn offset per
  axis (rounded) is kept; smaller images are padded.
- Training flips left-right with probability 1/2 when `data.random_flip`.

Draw order from the generator: flip, then scale, then crop offsets.
"""

from typing import NamedTuple

import ml_collections
import numpy as np

from maskrcnn_jax.data import transforms


class Geometry(NamedTuple):
  """The map from an original image to its canvas, in the image's own orientation.

  Resize to new_height x new_width (boxes scale per axis by new / old), flip left-right
  in that frame, keep the window [crop_y, crop_y + crop_height) x [crop_x, crop_x +
  crop_width) of it (the whole image unless cropped), then transpose onto the canvas when
  the canvas says so.
  """
  new_height: int
  new_width: int
  scale: float  # image_info's scale
  flip: bool
  crop_y: int
  crop_x: int
  crop_height: int
  crop_width: int

  @property
  def cropped(self) -> bool:
    return (self.crop_y, self.crop_x, self.crop_height, self.crop_width) != (
        0, 0, self.new_height, self.new_width)


def _whole(new_height: int, new_width: int, scale: float, flip: bool) -> Geometry:
  return Geometry(new_height, new_width, scale, flip, 0, 0, new_height, new_width)


def eval_geometry(height: int, width: int, data_config: ml_collections.ConfigDict,
                  flip: bool = False) -> Geometry:
  """The evaluation resize of an original height x width image (optionally flipped)."""
  cfg = data_config
  new_h, new_w, scale = transforms.resize_shape(height, width, cfg.resize_mode, cfg.min_size,
                                                cfg.max_size)
  return _whole(new_h, new_w, scale, flip)


def lsj_resize(height: int, width: int, target_height: float, target_width: float
               ) -> tuple[int, int, float]:
  """Detectron2's ResizeScale: the largest scale fitting target_height x target_width.

  Returns (round(height * scale), round(width * scale), scale), sides at least 1.
  """
  scale = min(target_height / height, target_width / width)
  return (max(int(round(height * scale)), 1), max(int(round(width * scale)), 1), scale)


def draw_geometry(height: int, width: int, data_config: ml_collections.ConfigDict,
                  canvas: transforms.Canvas, rng: np.random.Generator | None) -> Geometry:
  """The geometry of one original height x width image on `canvas` (module docstring).

  Args:
    height: original height.
    width: original width.
    data_config: `config.data`.
    canvas: from `transforms.choose_canvas` (sets the LSJ crop size).
    rng: None for evaluation; else flip, scale and crop are drawn from it.
  """
  cfg = data_config
  if rng is None:
    return eval_geometry(height, width, cfg)
  flip = bool(cfg.random_flip) and bool(rng.random() < 0.5)
  if cfg.large_scale_jitter:
    low, high = cfg.lsj_scale_range
    if not 0 < low <= high:
      raise ValueError(f'data.lsj_scale_range must be 0 < low <= high; got {(low, high)}')
    s = rng.uniform(low, high)
    new_h, new_w, scale = lsj_resize(height, width, s * canvas.height, s * canvas.width)
    crop_h, crop_w = min(new_h, canvas.height), min(new_w, canvas.width)
    offset_y, offset_x = np.round(
        rng.random(2) * [new_h - crop_h, new_w - crop_w]).astype(int)
    return Geometry(new_h, new_w, scale, flip, int(offset_y), int(offset_x), crop_h, crop_w)
  min_size = cfg.min_size
  if cfg.resize_mode in transforms.SHORTER_SIDE_MODES and len(cfg.train_min_sizes):
    min_size = int(cfg.train_min_sizes[rng.integers(len(cfg.train_min_sizes))])
  new_h, new_w, scale = transforms.resize_shape(height, width, cfg.resize_mode, min_size,
                                                cfg.max_size)
  return _whole(new_h, new_w, scale, flip)


def crop_boxes(boxes: np.ndarray, geometry: Geometry
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Boxes of the resized (and flipped) image -> boxes of the crop window.

  Args:
    boxes: [n, 4] float32 x1y1x2y2, resized and flipped frame.
    geometry: the example's geometry.

  Returns:
    boxes: [n, 4] float32 shifted to the window and clipped to it.
    keep: [n] bool, False for boxes the crop left empty (a box already empty before
      the crop is kept, as without a crop).
    clipped: [n] bool, the box lost a part to the clip.
  """
  g = geometry
  shifted = boxes - np.array([g.crop_x, g.crop_y] * 2, np.float32)
  inside = np.clip(shifted, 0.0, np.array([g.crop_width, g.crop_height] * 2, np.float32))
  clipped = np.any(inside != shifted, axis=-1)
  nonempty = (inside[:, 2] > inside[:, 0]) & (inside[:, 3] > inside[:, 1])
  return inside, nonempty | ~clipped, clipped


def window_box_to_original(box: np.ndarray, height: int, width: int,
                           geometry: Geometry) -> np.ndarray:
  """A box of the crop window -> the unflipped original-image box it covers.

  Args:
    box: [4] float32 x1y1x2y2 in the window.
    height: original height.
    width: original width.
    geometry: the example's geometry.

  Returns:
    [4] float64 x1y1x2y2 original pixels.
  """
  g = geometry
  x1, y1, x2, y2 = (np.asarray(box, np.float64) + [g.crop_x, g.crop_y] * 2).tolist()
  if g.flip:
    x1, x2 = g.new_width - x2, g.new_width - x1
  return np.array([x1 * width / g.new_width, y1 * height / g.new_height,
                   x2 * width / g.new_width, y2 * height / g.new_height])
