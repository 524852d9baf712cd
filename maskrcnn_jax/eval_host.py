"""Host post-processing of evaluation outputs: box-region pasting, region RLE, processes.

Each detection's mask is pasted only over the image rows and columns its box can reach
(`paste_region`) and RLE-encoded from that region (`encode_region`): the full-image
column-major runs are rebuilt from the region's runs, so no [H, W] mask is ever made.
The pixels are those of `ops.masks.paste_mask` (the same float64 / float32 arithmetic in
the same order, so the same threshold decisions) and the strings those of pycocotools'
`encode` of the full mask (tests/test_eval_host.py checks both).

`image_results` turns one image's detections into COCO results; `batch_results` does it
for a batch of numpy outputs and is what `ResultsPool` runs in spawned worker processes
(JAX runs threads, so forking after it started is unsafe). Nothing here imports jax.
"""

import concurrent.futures
import multiprocessing
import os
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_util

from maskrcnn_jax.data import transforms
from maskrcnn_jax.ops import masks as mask_ops

PADDING_IMAGE_ID = -1  # data.pipeline.PADDING_IMAGE_ID (that module is not imported here)


def _taps(coords: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """`ops.masks._linear_taps`, per tap: indices [2][n] int64, weights [2][n] float64."""
  indices, weights = mask_ops._linear_taps(coords, size)  # pylint: disable=protected-access
  return (indices[:, 0], indices[:, 1]), (weights[:, 0], weights[:, 1])


def _region_bilinear(mask_probs: np.ndarray, box: np.ndarray, height: int, width: int,
                     threshold: float) -> tuple[np.ndarray, int, int]:
  """`paste_mask(method='bilinear')` over the rows/columns it computes."""
  x1, y1, x2, y2 = (float(v) for v in box)
  if not (x2 > x1 and y2 > y1):
    return np.zeros((0, 0), bool), 0, 0
  size_y, size_x = mask_probs.shape
  margin_y, margin_x = (y2 - y1) / size_y, (x2 - x1) / size_x
  row0 = max(int(np.floor(y1 - margin_y)), 0)
  row1 = min(int(np.ceil(y2 + margin_y)) + 1, height)
  col0 = max(int(np.floor(x1 - margin_x)), 0)
  col1 = min(int(np.ceil(x2 + margin_x)) + 1, width)
  if row1 <= row0 or col1 <= col0:
    return np.zeros((0, 0), bool), 0, 0
  ys = (np.arange(row0, row1) + 0.5 - y1) * (size_y / (y2 - y1)) - 0.5
  xs = (np.arange(col0, col1) + 0.5 - x1) * (size_x / (x2 - x1)) - 0.5
  rows, row_weights = _taps(ys, size_y)
  cols, col_weights = _taps(xs, size_x)
  image = mask_probs.astype(np.float64)
  # As ops.masks._bilinear_sample: sum over (a, b) of (w_row_a * w_col_b) * tap, in order;
  # gathering rows first, then columns, reads the same tap values.
  out = np.zeros((row1 - row0, col1 - col0))
  for a in range(2):
    picked_rows = image[rows[a]]  # [h, M]
    for b in range(2):
      term = np.multiply.outer(row_weights[a], col_weights[b])
      term *= picked_rows[:, cols[b]]
      out += term
  return out >= threshold, row0, col0


def paste_region(mask_probs: np.ndarray, box: Sequence[float], height: int, width: int,
                 threshold: float = 0.5, method: str = 'bilinear'
                 ) -> tuple[np.ndarray, int, int]:
  """`ops.masks.paste_mask`, returned as the region it computes.

  Args: as `paste_mask` (mask_probs [M, M], box [4] x1y1x2y2 image pixels).

  Returns:
    region [h, w] bool, row0, col0: the pasted mask is `region` at rows
    row0..row0 + h - 1, columns col0..col0 + w - 1, and False elsewhere ([0, 0] when
    nothing is pasted).
  """
  mask_probs = np.asarray(mask_probs)
  box = np.asarray(box, dtype=np.float64)
  if mask_probs.ndim != 2 or box.shape != (4,):
    raise ValueError(
        f'expected mask_probs [M, M] and box [4]; got {mask_probs.shape} and {box.shape}')
  if method == 'bilinear':
    return _region_bilinear(mask_probs, box, height, width, threshold)
  if method == 'torchvision':
    return mask_ops.torchvision_region(mask_probs, box, height, width, threshold)
  raise ValueError(f"method must be 'bilinear' or 'torchvision'; got {method!r}")


def region_runs(region: np.ndarray, row0: int, col0: int, height: int,
                width: int) -> np.ndarray:
  """COCO (column-major) uncompressed RLE counts of the full mask holding `region`.

  Args:
    region: [h, w] bool, placed at (row0, col0) of a [height, width] mask.

  Returns:
    counts: [k] int64, alternating runs of 0s and 1s starting with 0s, summing to
    height * width, no empty run except possibly the first (as pycocotools' encode).
  """
  total = height * width
  if region.size == 0 or not region.any():
    return np.array([total], np.int64)
  by_column = np.zeros((region.shape[1], region.shape[0] + 2), np.int8)  # [w, h + 2]
  by_column[:, 1:-1] = region.T
  steps = np.flatnonzero(np.diff(by_column, axis=1))  # into [w, h + 1]: a run starts/ends
  # Each column starts and ends with a zero, so its steps alternate start, end.
  cols, rows = np.divmod(steps, region.shape[0] + 1)
  positions = (cols + col0) * height + rows + row0
  starts, ends = positions[0::2], positions[1::2]
  # A run ending at a column's last row and one starting at the next column's first row
  # are one run in column-major order.
  joined = ends[:-1] == starts[1:]
  if joined.any():
    starts = np.concatenate([starts[:1], starts[1:][~joined]])
    ends = np.concatenate([ends[:-1][~joined], ends[-1:]])
  edges = np.empty(2 * len(starts) + 2, np.int64)
  edges[0], edges[-1] = 0, total
  edges[1:-1:2], edges[2:-1:2] = starts, ends
  counts = np.diff(edges)
  return counts[:-1] if counts[-1] == 0 else counts


def encode_region(region: np.ndarray, row0: int, col0: int, height: int,
                  width: int) -> dict[str, Any]:
  """COCO compressed RLE (str counts, JSON-ready) of the full mask holding `region`."""
  rle = mask_util.frPyObjects(
      {'counts': region_runs(region, row0, col0, height, width).tolist(),
       'size': [height, width]}, height, width)
  return {'size': [height, width], 'counts': rle['counts'].decode('ascii')}


def image_results(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                  mask_probs: np.ndarray, image_id: int, info: np.ndarray,
                  original_hw: Sequence[int], category_ids: Sequence[int],
                  mask_threshold: float, mask_paste: str
                  ) -> tuple[list[dict], list[dict]]:
  """One image's valid detections -> COCO bbox and segm results in original pixels.

  The canvas transpose is undone first (`transforms.to_original_orientation`).

  Args:
    boxes: [n, 4] float32 x1y1x2y2 in the canvas frame.
    scores: [n] float32.
    classes: [n] int32 classes 1..K.
    mask_probs: [n, M, M] float32 mask probabilities over each box, canvas frame; None
      for a model without a mask head (no segm results).
    image_id: the dataset image id.
    info: [5] float32, the image's image_info row (maskrcnn_jax/image_info.py).
    original_hw: (height, width) of the original image.
    category_ids: dataset category id of each class 1..K.
    mask_threshold, mask_paste: `config.eval.mask_threshold` / `mask_paste`.
  """
  height, width = (int(v) for v in original_hw)
  with_masks = mask_probs is not None
  if not with_masks:
    mask_probs = np.zeros((len(boxes), 1, 1), np.float32)
  boxes, mask_probs, (resized_h, resized_w) = transforms.to_original_orientation(
      np.asarray(boxes, np.float32), np.asarray(mask_probs), info)
  boxes = transforms.resize_boxes(boxes, resized_h, resized_w, height, width)
  bbox_results, segm_results = [], []
  for box, score, label, probs in zip(boxes, scores, classes, mask_probs):
    common = {'image_id': int(image_id), 'category_id': int(category_ids[int(label) - 1]),
              'score': float(score)}
    x1, y1, x2, y2 = (float(v) for v in box)
    bbox_results.append(dict(common, bbox=[x1, y1, x2 - x1, y2 - y1]))
    if not with_masks:
      continue
    region, row0, col0 = paste_region(probs, box, height, width, mask_threshold, mask_paste)
    segm_results.append(dict(common, segmentation=encode_region(region, row0, col0,
                                                                height, width)))
  return bbox_results, segm_results


def batch_results(outputs: dict[str, np.ndarray], original_hw: Sequence[Sequence[int]],
                  category_ids: Sequence[int], mask_threshold: float, mask_paste: str
                  ) -> tuple[list[dict], list[dict]]:
  """One batch of host outputs -> COCO results; padding examples are dropped.

  Args:
    outputs: numpy 'boxes' [B, D, 4], 'scores' [B, D], 'classes' [B, D], 'masks'
      [B, D, M, M], 'valid' [B, D] bool, 'image_info' [B, 5], 'image_id' [B].
    original_hw: [B] (height, width) of each example's original image (ignored for
      padding examples).
  """
  bbox_results, segm_results = [], []
  for i, image_id in enumerate(outputs['image_id']):
    if image_id == PADDING_IMAGE_ID:
      continue
    keep = np.asarray(outputs['valid'][i], bool)
    boxes, segms = image_results(
        outputs['boxes'][i][keep], outputs['scores'][i][keep], outputs['classes'][i][keep],
        outputs['masks'][i][keep] if 'masks' in outputs else None, int(image_id), outputs['image_info'][i], original_hw[i],
        category_ids, mask_threshold, mask_paste)
    bbox_results += boxes
    segm_results += segms
  return bbox_results, segm_results


def num_workers(requested: int) -> int:
  """`eval.host_workers`: -1 -> one process per core (at most 8); 0 -> none."""
  if requested < -1:
    raise ValueError(f'config.eval.host_workers must be -1, 0 or positive; got {requested}')
  return min(os.cpu_count() or 1, 8) if requested == -1 else requested


def process_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
  """`workers` >= 1 spawned processes for `batch_results`."""
  return concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context('spawn'))
