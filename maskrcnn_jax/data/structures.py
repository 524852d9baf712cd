"""A COCO-format split once read: its image records, the dataset, and its errors.

`coco.load_coco` (and the TFDS builder) make one `ImageRecord` per image; images and
masks are decoded lazily by the input pipeline (`image_files.read_image`,
`mask_decoding.instance_rle`). Bad input is never dropped silently: it raises
`CocoFormatError` naming the file and the image or annotation id, or is one of the
documented skips (`SKIP_REASONS`), counted by `Skips` and logged:
  - `degenerate_polygons`: polygons with fewer than 3 points are dropped from their
    instance (as Detectron2); `no_valid_segmentation`: instances left without any;
    an annotation with no segmentation at all (no key, null, [] or {}: Detectron2's
    test) is no skip but a box-only instance, its segmentation None, counted in
    `CocoDataset.num_without_segmentation` (`coco.check_masks` refuses it to a mask head);
  - `clipped_boxes`: boxes reaching outside the image are clipped to it;
  - `empty_boxes`: instances whose box has no area (after clipping) are skipped;
  - `empty_images`: images without non-crowd instances, when `filter_empty` is set;
  - `few_keypoints`: images with fewer labelled keypoints (visibility > 0, all instances
    together) than `min_keypoints` (Detectron2's MIN_KEYPOINTS_PER_IMAGE for training).
"""

import dataclasses
from typing import Any, Sequence

import numpy as np

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
    segmentations: n COCO segmentations (polygon lists or RLE dicts); None for a
      box-only instance (its gt mask in a batch is zeros, never a target: `check_masks`).
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
    num_without_segmentation: instances of the records without a segmentation (box only).
    without_segmentation_ids: the annotation ids of the first few of them, for messages.
  """
  records: Sequence[ImageRecord]
  instance_counts: np.ndarray
  category_ids: tuple[int, ...]
  class_names: tuple[str, ...]
  skipped: dict[str, int]
  annotation_file: str
  keypoint_names: tuple[str, ...] = ()
  num_without_segmentation: int = 0
  without_segmentation_ids: tuple[int, ...] = ()

  def __len__(self) -> int:
    return len(self.records)

  @property
  def num_classes(self) -> int:
    return len(self.category_ids)
