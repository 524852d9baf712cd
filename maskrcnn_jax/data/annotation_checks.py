"""One COCO annotation's fields, checked as the annotation file is read (`coco.load_coco`).

Each check raises `structures.CocoFormatError` naming the file and annotation id
(`where`), or records a documented skip in `skips` (structures.py).
"""

import math
from typing import Any

import numpy as np

from maskrcnn_jax.data import structures


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def has_segmentation(ann: dict[str, Any]) -> bool:
  """Whether an annotation gives a segmentation: a `segmentation` that is not null, [] or
  {} (Detectron2's `if segm:`; without one the instance is box-only)."""
  segmentation = ann.get('segmentation')
  return segmentation is not None and not (isinstance(segmentation, (list, dict))
                                           and not segmentation)


def check_segmentation(segmentation: Any, height: int, width: int, where: str,
                       ann_id: Any, skips: structures.Skips) -> Any:
  """Validates one segmentation; returns it with degenerate polygons dropped, or None."""
  if isinstance(segmentation, list):
    polygons = []
    for polygon in segmentation:
      if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
        raise structures.CocoFormatError(f'{where}: a polygon must be a list of numbers')
      if len(polygon) % 2:
        raise structures.CocoFormatError(
            f'{where}: a polygon has an odd number of coordinates ({len(polygon)})')
      if len(polygon) < 6:
        skips.add('degenerate_polygons', ann_id)
        continue
      polygons.append(polygon)
    return polygons or None
  if isinstance(segmentation, dict):
    if set(segmentation) != {'counts', 'size'}:
      raise structures.CocoFormatError(f"{where}: RLE needs exactly the keys 'counts' and 'size'")
    if list(segmentation['size']) != [height, width]:
      raise structures.CocoFormatError(
          f"{where}: RLE size {segmentation['size']} is not the image size "
          f'{[height, width]}')
    if not isinstance(segmentation['counts'], (str, list)):
      raise structures.CocoFormatError(f'{where}: RLE counts must be a string or a list of ints')
    return segmentation
  raise structures.CocoFormatError(
      f'{where}: segmentation must be a list of polygons or an RLE dict, got '
      f'{type(segmentation).__name__}')


def check_box(bbox: Any, height: int, width: int, where: str, ann_id: Any,
              skips: structures.Skips) -> np.ndarray | None:
  """COCO [x, y, w, h] -> x1y1x2y2 clipped to the image, or None if it has no area."""
  if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
    raise structures.CocoFormatError(
        f'{where}: bbox must be 4 finite numbers [x, y, w, h]; got {bbox}')
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
    raise structures.CocoFormatError(
        f'{annotation_file}: categories declare different keypoint lists; one list shared '
        'by every category with keypoints is supported')
  return next(iter(declared)) if declared else ()


def check_keypoints(keypoints: Any, num_keypoints: int, where: str) -> np.ndarray:
  """COCO's flat [x1, y1, v1, ...] -> [K, 3] float32; CocoFormatError when malformed."""
  if (not isinstance(keypoints, list) or len(keypoints) != 3 * num_keypoints
      or not all(_is_number(v) for v in keypoints)):
    raise structures.CocoFormatError(f'{where}: keypoints must be {3 * num_keypoints} numbers '
                                     f'(x, y, v for each of the {num_keypoints} keypoints)')
  out = np.asarray(keypoints, np.float32).reshape(num_keypoints, 3)
  if not np.all(np.isin(out[:, 2], (0, 1, 2))):
    raise structures.CocoFormatError(f'{where}: keypoint visibility must be 0, 1 or 2')
  return out
