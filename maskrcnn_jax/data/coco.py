"""COCO-format instance annotations: an annotation file plus an image folder (host side).

`load_coco` validates the file once and keeps one `ImageRecord` per image; images and
masks are decoded lazily (`read_image`, `decode_masks`) by the input pipeline.

Bad input is never dropped silently. Errors (`CocoFormatError`, naming the file and the
image or annotation id): unreadable or truncated JSON, a missing, corrupt or wrongly
sized image, an unknown category or image id, a duplicate id, a malformed bbox or
segmentation (not numbers, a polygon with an odd number of coordinates, an RLE whose
size is not the image's). Documented skips, counted in `CocoDataset.skipped` and logged:
  - `degenerate_polygons`: polygons with fewer than 3 points are dropped from their
    instance (as Detectron2); `no_valid_segmentation`: instances left without any;
  - `clipped_boxes`: boxes reaching outside the image are clipped to it;
  - `empty_boxes`: instances whose box has no area (after clipping) are skipped;
  - `empty_images`: images without non-crowd instances, when `filter_empty` is set;
  - `few_keypoints`: images with fewer labelled keypoints (visibility > 0, all instances
    together) than `min_keypoints` (Detectron2's MIN_KEYPOINTS_PER_IMAGE for training).
Crowd regions (`iscrowd` 1) are kept with `is_crowd` True: never positives, ignored in
matching; a missing `iscrowd` reads as 0.

`check_num_classes` is the one rule tying a model's classes to a dataset's categories;
`check_evaluation_fields` refuses, before any inference, a file pycocotools cannot
evaluate.
"""

import collections
import dataclasses
import io
import json
import logging
import math
import os
from typing import Any, Sequence

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from maskrcnn_jax.ops import masks as mask_ops

SKIP_REASONS = ('degenerate_polygons', 'no_valid_segmentation', 'clipped_boxes',
                'empty_boxes', 'empty_images', 'few_keypoints')


class CocoFormatError(ValueError):
  """Bad COCO input; the message names the file and the image or annotation id."""


class ImageReadError(CocoFormatError):
  """An image file that is missing, cannot be decoded, or has another size than its
  annotation says (`read_image`); training may skip it (data.corrupt_images)."""


class Skips:
  """Counts the documented skips and keeps the first few ids of each for the log."""

  def __init__(self):
    self.counts = {reason: 0 for reason in SKIP_REASONS}
    self._ids = {reason: [] for reason in SKIP_REASONS}

  def add(self, reason: str, item_id: Any) -> None:
    self.counts[reason] += 1
    if len(self._ids[reason]) < 5:
      self._ids[reason].append(item_id)

  def summary(self) -> str:
    return ', '.join(
        f'{reason} {count}' + (f" (ids {', '.join(map(str, self._ids[reason]))}"
                               f"{', ...' if count > 5 else ''})" if count else '')
        for reason, count in self.counts.items())


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """One image and its instances, as read from the annotation file.

  Attributes:
    image_id: COCO image id.
    path: image file path, or where the image came from when `image_bytes` is set.
    height, width: image size from the annotation file (checked when read).
    annotation_ids: [n] int64.
    boxes: [n, 4] float32 x1y1x2y2 pixels of the original image, inside the image.
    classes: [n] int32 contiguous classes 1..K.
    is_crowd: [n] bool.
    segmentations: n COCO segmentations (polygon lists or RLE dicts).
    source: the annotation file (or TFDS split), for error messages.
    image_bytes: the encoded image, for records that do not read it from `path`.
    keypoints: [n, K, 3] float32 COCO x, y (integer pixel indices of the original
      image), visibility 0 / 1 / 2; zeros for instances of a category without
      keypoints. None when the dataset has no keypoints.
    keypoint_names: the K names (`keypoint_names` of the dataset), for the flip's
      left/right swap.
  """
  image_id: int
  path: str
  height: int
  width: int
  annotation_ids: np.ndarray
  boxes: np.ndarray
  classes: np.ndarray
  is_crowd: np.ndarray
  segmentations: tuple[Any, ...]
  source: str
  image_bytes: bytes | None = None
  keypoints: np.ndarray | None = None
  keypoint_names: tuple[str, ...] = ()

  @property
  def num_instances(self) -> int:
    return len(self.annotation_ids)


@dataclasses.dataclass(frozen=True)
class CocoDataset:
  """A validated COCO-format split.

  Attributes:
    records: the kept images, in annotation-file order (a list, or a lazy sequence).
    instance_counts: [num_images] int64 instances of each record.
    category_ids: dataset category id of each contiguous class: class c (1..K) is
      `category_ids[c - 1]`.
    class_names: [K] category names, in the same order.
    skipped: count of each documented skip (`SKIP_REASONS`).
    annotation_file: the file read.
    keypoint_names: the categories' `keypoints` names (COCO person's 17), () without.
  """
  records: Sequence[ImageRecord]
  instance_counts: np.ndarray
  category_ids: tuple[int, ...]
  class_names: tuple[str, ...]
  skipped: dict[str, int]
  annotation_file: str
  keypoint_names: tuple[str, ...] = ()

  def __len__(self) -> int:
    return len(self.records)

  @property
  def num_classes(self) -> int:
    return len(self.category_ids)


def load_json(path: str) -> dict[str, Any]:
  """The annotation file's JSON; CocoFormatError if unreadable or without COCO's keys."""
  try:
    with open(path, 'rb') as f:
      data = json.load(f)
  except FileNotFoundError as e:
    raise CocoFormatError(f'{path}: annotation file not found') from e
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CocoFormatError(f'{path}: not valid JSON (truncated or corrupt?): {e}') from e
  if not isinstance(data, dict) or not {'images', 'annotations', 'categories'} <= set(data):
    raise CocoFormatError(
        f"{path}: a COCO annotation file needs 'images', 'annotations' and 'categories'")
  return data


def read_categories(annotation_file: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
  """(category ids, names) of an annotation file, sorted by id: class c is entry c - 1."""
  return _categories(load_json(annotation_file), annotation_file)


def _categories(data: dict[str, Any], annotation_file: str
                ) -> tuple[tuple[int, ...], tuple[str, ...]]:
  categories = sorted(data['categories'], key=lambda c: c['id'])
  category_ids = tuple(int(c['id']) for c in categories)
  if len(set(category_ids)) != len(category_ids):
    raise CocoFormatError(f'{annotation_file}: duplicate category ids')
  return category_ids, tuple(str(c.get('name', c['id'])) for c in categories)


def check_num_classes(num_classes: int, category_ids: Sequence[int], source: str,
                      labels_may_be_ids: bool = False) -> tuple[int, ...]:
  """The dataset category id of each model class 1..num_classes; refuses a mismatch.

  Training maps the categories sorted by id to classes 1..K, so a model must have
  exactly K classes: fewer gives class indices past the classifier (NaN losses), more
  makes evaluation read classes as category ids. `labels_may_be_ids` (inference only)
  also accepts num_classes = the largest category id, torchvision's COCO models whose
  labels are the category ids themselves.

  Args:
    num_classes: config.model.num_classes (foreground classes).
    category_ids: the dataset's category ids, sorted.
    source: the annotation file (or TFDS split), for the message.
  """
  if num_classes == len(category_ids):
    return tuple(category_ids)
  if labels_may_be_ids and num_classes == max(category_ids):
    return tuple(range(1, num_classes + 1))
  also = (f' (or {max(category_ids)}, its largest category id, for a model whose labels '
          'are category ids, as torchvision\'s COCO models)' if labels_may_be_ids else '')
  raise ValueError(
      f'config.model.num_classes = {num_classes} but {source} has {len(category_ids)} '
      f'categories: num_classes must equal the number of categories{also}; set '
      f'--config.model.num_classes={len(category_ids)}')


def check_evaluation_fields(annotation_file: str) -> None:
  """Refuses an annotation file without the `iscrowd` and `area` COCOeval reads.

  pycocotools reads the file itself and fails only after inference; this fails first.
  """
  if not os.path.isfile(annotation_file):
    return  # a TFDS split: its ground truth is built from the records, fields included
  for ann in load_json(annotation_file)['annotations']:
    missing = [field for field in ('iscrowd', 'area') if field not in ann]
    if missing:
      raise CocoFormatError(
          f"{annotation_file}: annotation id {ann.get('id')}: no {' and no '.join(missing)}"
          ' (COCO evaluation needs both: iscrowd 0 or 1, area = the mask area in pixels); '
          'scripts/check_dataset.py lists every annotation missing them')


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_segmentation(segmentation: Any, height: int, width: int, where: str,
                        ann_id: Any, skips: Skips) -> Any:
  """Validates one segmentation; returns it with degenerate polygons dropped, or None."""
  if isinstance(segmentation, list):
    polygons = []
    for polygon in segmentation:
      if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
        raise CocoFormatError(f'{where}: a polygon must be a list of numbers')
      if len(polygon) % 2:
        raise CocoFormatError(
            f'{where}: a polygon has an odd number of coordinates ({len(polygon)})')
      if len(polygon) < 6:
        skips.add('degenerate_polygons', ann_id)
        continue
      polygons.append(polygon)
    return polygons or None
  if isinstance(segmentation, dict):
    if set(segmentation) != {'counts', 'size'}:
      raise CocoFormatError(f"{where}: RLE needs exactly the keys 'counts' and 'size'")
    if list(segmentation['size']) != [height, width]:
      raise CocoFormatError(
          f"{where}: RLE size {segmentation['size']} is not the image size "
          f'{[height, width]}')
    if not isinstance(segmentation['counts'], (str, list)):
      raise CocoFormatError(f'{where}: RLE counts must be a string or a list of ints')
    return segmentation
  raise CocoFormatError(
      f'{where}: segmentation must be a list of polygons or an RLE dict, got '
      f'{type(segmentation).__name__}')


def check_box(bbox: Any, height: int, width: int, where: str, ann_id: Any,
               skips: Skips) -> np.ndarray | None:
  """COCO [x, y, w, h] -> x1y1x2y2 clipped to the image, or None if it has no area."""
  if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
    raise CocoFormatError(f'{where}: bbox must be 4 finite numbers [x, y, w, h]; got {bbox}')
  x, y, w, h = bbox
  box = np.array([x, y, x + w, y + h], np.float64)
  clipped = np.clip(box, 0, [width, height, width, height])
  if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
    skips.add('empty_boxes', ann_id)
    return None
  if np.any(clipped != box):
    skips.add('clipped_boxes', ann_id)
  return clipped.astype(np.float32)


def keypoint_names_of(data: dict[str, Any], annotation_file: str) -> tuple[str, ...]:
  """The `keypoints` names the categories declare (one list shared by all), or ()."""
  declared = {tuple(str(n) for n in c['keypoints']) for c in data['categories']
              if c.get('keypoints')}
  if len(declared) > 1:
    raise CocoFormatError(f'{annotation_file}: categories declare different keypoint lists; '
                          'one list shared by every category with keypoints is supported')
  return next(iter(declared)) if declared else ()


def check_keypoints(keypoints: Any, num_keypoints: int, where: str) -> np.ndarray:
  """COCO's flat [x1, y1, v1, ...] -> [K, 3] float32; CocoFormatError when malformed."""
  if (not isinstance(keypoints, list) or len(keypoints) != 3 * num_keypoints
      or not all(_is_number(v) for v in keypoints)):
    raise CocoFormatError(f'{where}: keypoints must be {3 * num_keypoints} numbers '
                          f'(x, y, v for each of the {num_keypoints} keypoints)')
  out = np.asarray(keypoints, np.float32).reshape(num_keypoints, 3)
  if not np.all(np.isin(out[:, 2], (0, 1, 2))):
    raise CocoFormatError(f'{where}: keypoint visibility must be 0, 1 or 2')
  return out


def labelled_keypoints(keypoints: np.ndarray | None) -> int:
  """Keypoints with visibility > 0 in an image's [n, K, 3] keypoints (0 for None)."""
  return 0 if keypoints is None else int(np.count_nonzero(keypoints[..., 2] > 0))


def load_coco(annotation_file: str, image_dir: str, filter_empty: bool,
              min_keypoints: int = 0) -> CocoDataset:
  """Reads and validates a COCO-format annotation file (see the module docstring).

  Args:
    annotation_file: path of the JSON file (`instances_*.json` format).
    image_dir: folder holding the images named by `file_name`.
    filter_empty: drop images without non-crowd instances (Detectron2 does for
      training, not for evaluation).
    min_keypoints: drop images with fewer labelled keypoints (0: keep all).

  Returns:
    the dataset; categories sorted by id map to classes 1..K.
  """
  annotation_file = os.fspath(annotation_file)
  data = load_json(annotation_file)
  skips = Skips()

  category_ids, class_names = _categories(data, annotation_file)
  class_of = {cid: i + 1 for i, cid in enumerate(category_ids)}
  keypoint_names = keypoint_names_of(data, annotation_file)
  with_keypoints = {int(c['id']) for c in data['categories'] if c.get('keypoints')}
  no_keypoints = np.zeros((len(keypoint_names), 3), np.float32)

  images = {}
  for image in data['images']:
    image_id = int(image['id'])
    if image_id in images:
      raise CocoFormatError(f'{annotation_file}: duplicate image id {image_id}')
    images[image_id] = image

  instances = collections.defaultdict(list)
  seen_ids = set()
  for ann in data['annotations']:
    ann_id = ann.get('id')
    where = f'{annotation_file}: annotation id {ann_id}'
    if ann_id in seen_ids:
      raise CocoFormatError(f'{where}: duplicate annotation id')
    seen_ids.add(ann_id)
    image = images.get(ann.get('image_id'))
    if image is None:
      raise CocoFormatError(f"{where}: unknown image id {ann.get('image_id')}")
    if ann.get('category_id') not in class_of:
      raise CocoFormatError(f"{where}: unknown category id {ann.get('category_id')}")
    if 'segmentation' not in ann:
      raise CocoFormatError(f'{where}: no segmentation')
    height, width = int(image['height']), int(image['width'])
    segmentation = check_segmentation(ann['segmentation'], height, width, where, ann_id,
                                       skips)
    if segmentation is None:
      skips.add('no_valid_segmentation', ann_id)
      continue
    box = check_box(ann.get('bbox'), height, width, where, ann_id, skips)
    if box is None:
      continue
    keypoints = no_keypoints
    if ann['category_id'] in with_keypoints and 'keypoints' in ann:
      keypoints = check_keypoints(ann['keypoints'], len(keypoint_names), where)
    instances[int(image['id'])].append(
        (int(ann_id), box, class_of[ann['category_id']], bool(ann.get('iscrowd', 0)),
         segmentation, keypoints))

  records = []
  for image_id, image in images.items():
    anns = instances[image_id]
    if filter_empty and not any(not crowd for _, _, _, crowd, _, _ in anns):
      skips.add('empty_images', image_id)
      continue
    keypoints = (np.array([a[5] for a in anns], np.float32).reshape(
        -1, len(keypoint_names), 3) if keypoint_names else None)
    if min_keypoints and labelled_keypoints(keypoints) < min_keypoints:
      skips.add('few_keypoints', image_id)
      continue
    path = os.path.join(image_dir, image['file_name'])
    if not os.path.isfile(path):
      raise CocoFormatError(f'{annotation_file}: image id {image_id}: missing image {path}')
    records.append(ImageRecord(
        image_id=image_id, path=path, height=int(image['height']),
        width=int(image['width']),
        annotation_ids=np.array([a[0] for a in anns], np.int64),
        boxes=np.array([a[1] for a in anns], np.float32).reshape(-1, 4),
        classes=np.array([a[2] for a in anns], np.int32),
        is_crowd=np.array([a[3] for a in anns], bool),
        segmentations=tuple(a[4] for a in anns), source=annotation_file,
        keypoints=keypoints, keypoint_names=keypoint_names))

  num_instances = sum(r.num_instances for r in records)
  problems = any(count for reason, count in skips.counts.items()
                 if reason not in ('empty_images', 'few_keypoints'))
  logging.log(logging.WARNING if problems else logging.INFO,
              '%s: %d images, %d instances (%d crowd), %d classes; skipped: %s',
              annotation_file, len(records), num_instances,
              sum(int(r.is_crowd.sum()) for r in records), len(category_ids), skips.summary())
  return CocoDataset(records=records,
                     instance_counts=np.array([r.num_instances for r in records], np.int64),
                     category_ids=category_ids,
                     class_names=class_names,
                     skipped=dict(skips.counts), annotation_file=annotation_file,
                     keypoint_names=keypoint_names)


# OpenCV's own flags: RGB out (where this OpenCV has it), and EXIF orientation left as
# stored, as Pillow reads it.
_CV2_RGB = getattr(cv2, 'IMREAD_COLOR_RGB', None)
_CV2_FLAGS = (cv2.IMREAD_COLOR if _CV2_RGB is None else _CV2_RGB) | cv2.IMREAD_IGNORE_ORIENTATION


def decode_pixels(data: bytes) -> np.ndarray:
  """An encoded image -> [height, width, 3] uint8 RGB, as Pillow's `convert('RGB')`.

  A complete (ends in its EOI marker) RGB or grayscale JPEG is decoded by OpenCV: the
  same libjpeg-turbo pixels, without Pillow's copies. Anything else (other formats, CMYK,
  a truncated file) goes through Pillow, which raises on what it cannot decode.
  """
  with Image.open(io.BytesIO(data)) as image:
    if (image.format == 'JPEG' and image.mode in ('RGB', 'L')
        and data.rstrip(b'\0').endswith(b'\xff\xd9')):
      pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _CV2_FLAGS)
      if pixels is not None and pixels.shape[:2] == image.size[::-1]:
        return pixels if _CV2_RGB is not None else pixels[..., ::-1].copy()
    return np.asarray(image if image.mode == 'RGB' else image.convert('RGB'))


def read_image(record: ImageRecord) -> np.ndarray:
  """Decodes a record's image as RGB: [height, width, 3] uint8 (no EXIF rotation)."""
  try:
    if record.image_bytes is None:
      with open(record.path, 'rb') as f:
        data = f.read()
    else:
      data = record.image_bytes
    pixels = decode_pixels(data)
  except FileNotFoundError as e:
    raise ImageReadError(
        f'{record.source}: image id {record.image_id}: missing image {record.path}') from e
  except (OSError, SyntaxError, ValueError) as e:
    raise ImageReadError(
        f'{record.source}: image id {record.image_id}: cannot decode {record.path}: {e}'
    ) from e
  if pixels.shape[:2] != (record.height, record.width):
    raise ImageReadError(
        f'{record.source}: image id {record.image_id}: {record.path} is '
        f'{pixels.shape[0]} x {pixels.shape[1]}, the annotation file says '
        f'{record.height} x {record.width}')
  return pixels


def instance_rle(record: ImageRecord, index: int) -> dict[str, Any]:
  """Instance `index` of the record as one compressed RLE (`mask_ops.segmentation_to_rle`).

  A malformed segmentation raises CocoFormatError naming the file and annotation id.
  """
  try:
    return mask_ops.segmentation_to_rle(record.segmentations[index], record.height,
                                        record.width)
  except ValueError as e:
    raise CocoFormatError(
        f'{record.source}: annotation id {record.annotation_ids[index]}: {e}') from e


def decode_masks(record: ImageRecord, indices: Sequence[int] | None = None) -> np.ndarray:
  """Rasterizes the record's instances (all, or those at `indices`).

  Returns:
    masks: [n, height, width] uint8 in {0, 1}.
  """
  indices = range(record.num_instances) if indices is None else indices
  masks = np.zeros((len(indices), record.height, record.width), np.uint8)
  for out, i in enumerate(indices):
    masks[out] = mask_util.decode(instance_rle(record, i))
  return masks
