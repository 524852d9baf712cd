"""Drawing detections and ground truth on an image (host side, PIL).

Small images are drawn enlarged by a whole factor (`drawing_scale`: the shorter side at
least `MIN_SIDE` pixels, each pixel a square block), so that masks, boxes and labels stay
readable on the 128-pixel demo images; labels use a font sized to the drawing, on a
filled tag that is kept inside the image. `draw_detections` draws a Predictor's result,
`draw_annotations` a dataset record's ground truth (crowd regions grey, tagged 'crowd').
"""

import functools
import math
from typing import Mapping, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

MIN_SIDE = 512  # pixels of a drawing's shorter side, at least
MAX_SIDE = 4096  # pixels of an enlarged drawing's longer side, at most
_CROWD = (160, 160, 160)


def drawing_scale(height: int, width: int) -> int:
  """The whole factor an image of `height` x `width` is enlarged by to be drawn: its
  shorter side to at least `MIN_SIDE`, its longer to at most `MAX_SIDE` (a thin image
  is enlarged less); 1 for images as large."""
  wanted = math.ceil(MIN_SIDE / max(1, min(height, width)))
  return max(1, min(wanted, MAX_SIDE // max(1, height, width)))


def _colour(category: int) -> tuple[int, int, int]:
  rng = np.random.default_rng(category)
  return tuple(int(v) for v in rng.integers(64, 256, size=3))


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
  """Pillow's own TrueType font at `size` pixels (its small bitmap font without FreeType
  or before Pillow 10.1)."""
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, OSError, ImportError):
    return ImageFont.load_default()


def _outline(mask: np.ndarray) -> np.ndarray:
  """[H, W] bool -> the mask's pixels with a 4-neighbour outside it."""
  padded = np.pad(mask, 1)
  inner = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
  return mask & ~inner


def _draw(image: np.ndarray, boxes: np.ndarray, labels: Sequence[str],
          colours: Sequence[tuple[int, int, int]], masks: np.ndarray | None = None,
          keypoints: np.ndarray | None = None, keypoint_offset: float = 0.0
          ) -> Image.Image:
  """Enlarges `image` by `drawing_scale` and draws the instances on it.

  Args:
    image: [H, W, 3] uint8 RGB.
    boxes: [n, 4] x1y1x2y2 in the image's pixels.
    labels: n texts, each drawn in a tag at its box's top-left corner.
    colours: n RGB colours.
    masks: [n, H, W] (bool or {0, 1}), blended at 50% and outlined (its border pixels in
      full colour); None for none.
    keypoints: [n, K, 3] x, y, visibility-or-score; drawn where the third value > 0.
    keypoint_offset: added to keypoint x, y: 0.5 for COCO's integer pixel indices, 0
      for continuous coordinates.
  """
  height, width = image.shape[:2]
  scale = drawing_scale(height, width)
  canvas = image.astype(np.float32)
  outlines = []
  for i in range(len(boxes)) if masks is not None else ():
    mask = np.asarray(masks[i], bool)
    canvas[mask] = 0.5 * canvas[mask] + 0.5 * np.array(colours[i])
    outlines.append(_outline(mask))
  for outline, colour in zip(outlines, colours):  # over every blend
    canvas[outline] = colour
  picture = Image.fromarray(np.repeat(np.repeat(canvas.astype(np.uint8), scale, 0), scale, 1))
  pen = ImageDraw.Draw(picture)
  font_size = max(14, round(math.sqrt(picture.width * picture.height) / 50))
  font = _font(font_size)
  line = max(2, font_size // 7)
  for box, label, colour in zip(boxes, labels, colours):
    x1, y1, x2, y2 = (float(v) * scale for v in box)
    # A box reaching the image's edge ends on its last pixel row or column.
    x2, y2 = min(x2, picture.width - 1), min(y2, picture.height - 1)
    pen.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=colour, width=line)
  for i, points in enumerate(keypoints if keypoints is not None else ()):
    radius = max(2, font_size // 4)
    for x, y, v in points:
      if v > 0:
        x, y = (x + keypoint_offset) * scale, (y + keypoint_offset) * scale
        pen.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colours[i],
                    outline=(255, 255, 255))
  # Tags last, over every box and mask; above the box when there is room, else inside.
  for box, label, colour in zip(boxes, labels, colours):
    left, top, right, bottom = pen.textbbox((0, 0), label, font=font)
    tag_w, tag_h = right - left + 2 * line, bottom - top + 2 * line
    x = min(max(0.0, float(box[0]) * scale), picture.width - tag_w)
    y = float(box[1]) * scale - tag_h
    if y < 0:
      y = min(float(box[1]) * scale, picture.height - tag_h)
    x, y = max(0.0, x), max(0.0, y)
    pen.rectangle([x, y, x + tag_w - 1, y + tag_h - 1], fill=tuple(c // 2 for c in colour))
    pen.text((x + line - left, y + line - top), label, fill=(255, 255, 255), font=font)
  return picture


def draw_detections(image: np.ndarray, detections: dict, names: dict,
                    min_score: float) -> Image.Image:
  """Masks blended at 50%, boxes and 'name score' labels for scores >= min_score, on the
  image enlarged by `drawing_scale`.

  Args:
    image: [H, W, 3] uint8 RGB.
    detections: a Predictor result: boxes [n, 4], scores [n], classes [n], masks [n, H, W]
      (optional), keypoints [n, K, 3] (optional, continuous x, y; drawn as dots).
    names: category id -> name; ids without a name are drawn as numbers.
    min_score: detections scoring lower are not drawn.
  """
  keep = np.flatnonzero(np.asarray(detections['scores']) >= min_score)
  classes = [int(c) for c in np.asarray(detections['classes'])[keep]]
  labels = [f'{names.get(c, c)} {s:.2f}'
            for c, s in zip(classes, np.asarray(detections['scores'])[keep])]
  masks = np.asarray(detections['masks'])[keep] if 'masks' in detections else None
  keypoints = (np.asarray(detections['keypoints'])[keep] if 'keypoints' in detections
               else None)
  return _draw(image, np.asarray(detections['boxes']).reshape(-1, 4)[keep], labels,
               [_colour(c) for c in classes], masks, keypoints)


def draw_annotations(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray,
                     masks: np.ndarray | None, names: Mapping[int, str],
                     is_crowd: np.ndarray | None = None,
                     keypoints: np.ndarray | None = None) -> Image.Image:
  """Ground truth: masks blended at 50%, boxes and name tags, on the image enlarged by
  `drawing_scale`; crowd regions in grey, tagged 'crowd <name>'.

  Args:
    image: [H, W, 3] uint8 RGB.
    boxes: [n, 4] x1y1x2y2 pixels (an `ImageRecord`'s boxes).
    classes: [n] labels that `names` names (a record's classes 1..K with
      {class: name}, or category ids with {id: name}); others are drawn as numbers.
    masks: [n, H, W] {0, 1} (`mask_decoding.decode_masks`), or None.
    names: label -> name.
    is_crowd: [n] bool, or None for no crowd regions.
    keypoints: [n, K, 3] COCO x, y, visibility (integer pixel indices), or None.
  """
  classes = [int(c) for c in np.asarray(classes).reshape(-1)]
  crowd = (np.zeros(len(classes), bool) if is_crowd is None
           else np.asarray(is_crowd, bool).reshape(-1))
  labels = [f"{'crowd ' if k else ''}{names.get(c, c)}" for c, k in zip(classes, crowd)]
  colours = [_CROWD if k else _colour(c) for c, k in zip(classes, crowd)]
  return _draw(image, np.asarray(boxes, np.float32).reshape(-1, 4), labels, colours, masks,
               keypoints, keypoint_offset=0.5)
