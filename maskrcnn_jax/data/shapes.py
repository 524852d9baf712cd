"""A synthetic shapes dataset written as real COCO files (host side, NumPy + pycocotools).

Circles, squares, triangles and stars of random size, colour, rotation and position on
textured backgrounds; shapes overlap, so earlier ones are partly occluded by later ones,
and some are tiny. Unoccluded instances are written as polygons, occluded ones as
compressed RLE of their visible part, and some images hold a crowd of dots as one
`iscrowd` region in uncompressed RLE, so all three COCO mask formats are exercised;
some images are empty. The files go through exactly the reading code of COCO
(`data/coco.py`). Generation is deterministic in the seed and takes seconds.

With `keypoints=True` every category declares the same K = 4 keypoints, the extreme
points of each shape's outline (`KEYPOINT_NAMES`: topmost, rightmost, bottommost and
leftmost vertex; for stars these are tips, for triangles and squares corners, circles
are 24-gons), written as COCO person keypoints are: [x, y, v] per keypoint with x, y
pixel indices (the continuous point - 0.5), v = 2 where the point lies in the image and
no later shape or crowd region covers it, else 0 0 0; `num_keypoints` counts the v = 2.
Only the annotations change: images, masks and boxes are those without keypoints.
"""

import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from maskrcnn_jax.data import transforms

CATEGORIES = ({'id': 1, 'name': 'circle'}, {'id': 2, 'name': 'square'},
              {'id': 3, 'name': 'triangle'}, {'id': 4, 'name': 'star'})
_SPLIT_SALT = {'train': 0, 'val': 1}
# Extreme points of the outline; a left-right flip swaps 'left' and 'right'.
KEYPOINT_NAMES = ('top', 'right', 'bottom', 'left')
_MIN_VISIBLE_PIXELS = 4


def _outline(kind: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
  """Flat [x0, y0, x1, y1, ...] float64 polygon of one shape (1..4 as CATEGORIES)."""
  if kind == 1:
    thetas = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    radii = np.full(24, radius)
  elif kind in (2, 3):
    corners = 4 if kind == 2 else 3
    thetas = angle + np.linspace(0, 2 * np.pi, corners, endpoint=False)
    radii = np.full(corners, radius)
  else:
    thetas = angle + np.linspace(0, 2 * np.pi, 10, endpoint=False)
    radii = np.where(np.arange(10) % 2 == 0, radius, 0.45 * radius)
  xy = np.stack([cx + radii * np.cos(thetas), cy + radii * np.sin(thetas)], axis=-1)
  return np.round(xy.reshape(-1), 2)  # as written to JSON, so the file rasterizes the same


def _rasterize(polygon: np.ndarray, size: int) -> np.ndarray:
  """[size, size] bool mask of a flat polygon, as pycocotools rasterizes it."""
  rle = mask_util.frPyObjects([polygon.tolist()], size, size)
  return mask_util.decode(mask_util.merge(rle)).astype(bool)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """[size, size, 3] float32 texture: a smooth colour field, stripes and pixel noise."""
  coarse = rng.uniform(30, 225, (rng.integers(2, 6), rng.integers(2, 6), 3))
  field = transforms.resize_image(coarse, size, size)
  angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
  yy, xx = np.mgrid[:size, :size]
  stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
  field += rng.uniform(0, 30) * stripes[..., None]
  return field + rng.normal(0, 8, (size, size, 3))


def extreme_points(polygon: np.ndarray) -> np.ndarray:
  """[4, 2] float64 continuous x, y of a flat polygon's vertices, as KEYPOINT_NAMES."""
  xy = polygon.reshape(-1, 2)
  return xy[[np.argmin(xy[:, 1]), np.argmax(xy[:, 0]), np.argmax(xy[:, 1]),
             np.argmin(xy[:, 0])]]


def _keypoint_fields(points: np.ndarray, covered: np.ndarray) -> dict:
  """COCO `keypoints` (pixel indices, point - 0.5) and `num_keypoints` of [4, 2] points."""
  size = covered.shape[0]
  flat = []
  for x, y in points:
    inside = 0 <= x < size and 0 <= y < size
    if inside and not covered[int(y), int(x)]:
      flat += [round(float(x) - 0.5, 2), round(float(y) - 0.5, 2), 2]
    else:
      flat += [0, 0, 0]
  return {'keypoints': flat, 'num_keypoints': int(sum(flat[2::3]) // 2)}


def render_image(rng: np.random.Generator, size: int, max_shapes: int, empty: bool,
                 crowd: bool, keypoints: bool = False) -> tuple[np.ndarray, list[dict]]:
  """One image and its annotations (without ids).

  Returns:
    image: [size, size, 3] uint8.
    annotations: dicts with `category_id`, `segmentation`, `bbox`, `area`, `iscrowd`
      (and `keypoints`, `num_keypoints` with `keypoints`).
  """
  image = _background(rng, size)
  shapes = []  # (category, full mask, polygon)
  for _ in range(0 if empty else rng.integers(1, max_shapes + 1)):
    kind = int(rng.integers(1, 5))
    tiny = rng.random() < 0.15
    radius = rng.uniform(2, 4) if tiny else rng.uniform(0.06, 0.25) * size
    cx, cy = rng.uniform(0, size, 2)
    polygon = _outline(kind, cx, cy, radius, rng.uniform(0, 2 * np.pi))
    mask = _rasterize(polygon, size)
    colour = rng.uniform(0, 255, 3)
    image[mask] = colour + rng.normal(0, 6, (int(mask.sum()), 3))
    shapes.append((kind, mask, polygon))
  crowd_mask = np.zeros((size, size), bool)
  if crowd:
    yy, xx = np.mgrid[:size, :size]
    for cx, cy in rng.uniform(0, size, (12, 2)):
      crowd_mask |= (xx - cx) ** 2 + (yy - cy) ** 2 <= 2.0 ** 2
    image[crowd_mask] = rng.uniform(0, 255, 3)

  annotations = []
  covered = crowd_mask.copy()
  for kind, mask, polygon in reversed(shapes):  # later shapes are on top
    visible = mask & ~covered
    on_top = covered.copy() if keypoints else None  # later shapes and the crowd
    covered |= mask
    if visible.sum() < _MIN_VISIBLE_PIXELS:
      continue
    rle = mask_util.encode(np.asfortranarray(visible.astype(np.uint8)))
    if np.array_equal(visible, mask):
      segmentation = [polygon.tolist()]
    else:
      segmentation = {'counts': rle['counts'].decode('ascii'), 'size': [size, size]}
    annotation = _annotation(kind, segmentation, rle, crowd=False)
    if keypoints:
      annotation.update(_keypoint_fields(extreme_points(polygon), on_top))
    annotations.append(annotation)
  if crowd:
    rle = mask_util.encode(np.asfortranarray(crowd_mask.astype(np.uint8)))
    runs = _uncompressed_counts(crowd_mask)
    annotation = _annotation(1, {'counts': runs, 'size': [size, size]}, rle, crowd=True)
    if keypoints:
      annotation.update(keypoints=[0] * 3 * len(KEYPOINT_NAMES), num_keypoints=0)
    annotations.append(annotation)
  return np.clip(np.round(image), 0, 255).astype(np.uint8), annotations[::-1]


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
  """Column-major run lengths starting with a run of zeros (COCO uncompressed RLE)."""
  flat = mask.T.reshape(-1).astype(np.int8)
  change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
  return np.diff(np.concatenate([[0], change])).tolist()


def _annotation(kind: int, segmentation, rle: dict, crowd: bool) -> dict:
  return {'category_id': kind, 'segmentation': segmentation,
          'bbox': [float(v) for v in mask_util.toBbox(rle)],
          'area': float(mask_util.area(rle)), 'iscrowd': int(crowd)}


def write_split(root: str, split: str, num_images: int, image_size: int, seed: int,
                max_shapes: int = 6, empty_every: int = 8, crowd_every: int = 6,
                keypoints: bool = False) -> tuple[str, str]:
  """Writes `root/<split>/*.png` and `root/annotations/instances_<split>.json`.

  `split` is 'train' or 'val' (they draw from different random streams); images are
  image_size x image_size with 1..max_shapes shapes.

  Image i is empty when i % empty_every == empty_every - 1 and holds a crowd region when
  i % crowd_every == crowd_every - 1; everything else is drawn from
  `np.random.default_rng([seed, split, i])`. `keypoints` adds the extreme-point keypoints
  (module docstring) to the annotations and categories.

  Returns:
    (annotation file, image folder).
  """
  image_dir = os.path.join(root, split)
  os.makedirs(image_dir, exist_ok=True)
  os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
  images, annotations = [], []
  for i in range(num_images):
    rng = np.random.default_rng([seed, _SPLIT_SALT[split], i])
    image, anns = render_image(rng, image_size, max_shapes,
                               empty=i % empty_every == empty_every - 1,
                               crowd=i % crowd_every == crowd_every - 1,
                               keypoints=keypoints)
    file_name = f'{i + 1:06d}.png'
    Image.fromarray(image).save(os.path.join(image_dir, file_name), compress_level=1)
    images.append({'id': i + 1, 'file_name': file_name, 'height': image_size,
                   'width': image_size})
    for ann in anns:
      annotations.append({'id': len(annotations) + 1, 'image_id': i + 1, **ann})
  annotation_file = os.path.join(root, 'annotations', f'instances_{split}.json')
  categories = [dict(c, keypoints=list(KEYPOINT_NAMES), skeleton=[]) if keypoints else dict(c)
                for c in CATEGORIES]
  with open(annotation_file, 'w') as f:
    json.dump({'info': {'description': f'synthetic shapes, seed {seed}'}, 'images': images,
               'annotations': annotations, 'categories': categories}, f)
  return annotation_file, image_dir


def write_shapes(root: str, num_train: int = 512, num_val: int = 64, image_size: int = 128,
                 seed: int = 0, keypoints: bool = False) -> dict[str, tuple[str, str]]:
  """Writes the train and val splits under `root`; returns split -> (annotations, images)."""
  return {'train': write_split(root, 'train', num_train, image_size, seed,
                               keypoints=keypoints),
          'val': write_split(root, 'val', num_val, image_size, seed, keypoints=keypoints)}
