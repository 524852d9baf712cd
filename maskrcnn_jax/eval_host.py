"""Host post-processing of evaluation outputs: box-region pasting, region RLE, processes.

Each detection's mask is pasted only over the image rows and columns its box can reach
(`paste_region`) and RLE-encoded from that region (`region_runs`): the full-image
column-major runs are rebuilt from the region's run starts and ends, so no [H, W] mask
is ever made. The pixels are those of `ops.masks.paste_mask`:
torchvision's float32 arithmetic in the same order; for the bilinear paste, float32
separable values, with the float64 reference recomputed where they are too close to the
threshold to decide. The strings are those of pycocotools' `encode` of the full mask
(tests/test_eval_host.py checks both); one image's masks are compressed in one call.

`image_results` turns one image's detections into COCO results; `batch_results` does it
for a batch of numpy outputs and is what `ResultsPool` runs in spawned worker processes
(JAX runs threads, so forking after it started is unsafe). Nothing here imports jax.
"""

import concurrent.futures
import multiprocessing
import os
import sys
import types
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
from pycocotools import mask as mask_util

from maskrcnn_jax.data import transforms
from maskrcnn_jax.ops import masks as mask_ops

PADDING_IMAGE_ID = -1  # data.pipeline.PADDING_IMAGE_ID (that module is not imported here)


class _Taps(NamedTuple):
  """One detection's interpolation taps along one image axis (h rows or w columns)."""
  start: int  # first image row (column) of the region
  index0: np.ndarray  # [n] int64 mask rows (columns) read, safe to gather
  index1: np.ndarray  # [n] int64
  weight0: np.ndarray  # [n] float32 (torchvision's; bilinear: exact0 rounded)
  weight1: np.ndarray  # [n] float32
  exact0: np.ndarray | None = None  # [n] float64, bilinear only: the reference's weights
  exact1: np.ndarray | None = None  # [n] float64

  def pick(self, positions: np.ndarray) -> '_Taps':
    return _Taps(self.start, *(a[positions] for a in self[1:]))


def _split_taps(start: np.ndarray, offsets: np.ndarray, *taps: np.ndarray) -> list[_Taps]:
  """ops.masks' concatenated taps of n boxes -> n `_Taps`."""
  bounds = offsets.tolist()
  return [_Taps(s, *[a[b0:b1] for a in taps])
          for s, b0, b1 in zip(start.tolist(), bounds[:-1], bounds[1:])]


def _bilinear_taps(lo: np.ndarray, hi: np.ndarray, mask_size: int,
                   length: int) -> list[_Taps]:
  start, offsets, coords = mask_ops.bilinear_paste_coords(lo, hi, mask_size, length)
  indices, weights = mask_ops._linear_taps(  # pylint: disable=protected-access
      coords, mask_size)
  indices, weights = np.ascontiguousarray(indices.T), np.ascontiguousarray(weights.T)
  approx = weights.astype(np.float32)
  return _split_taps(start, offsets, indices[0], indices[1], approx[0], approx[1],
                     weights[0], weights[1])


def _torchvision_taps(lo: np.ndarray, hi: np.ndarray, mask_size: int,
                      length: int) -> list[_Taps]:
  return _split_taps(*mask_ops.torchvision_paste_taps(lo, hi, mask_size, length))


def _framed(h: int, w: int) -> np.ndarray:
  """[h + 2, w] bool zeros: a region with a 0 above and below each column (for the runs)."""
  return np.zeros((h + 2, w), bool)


def _bilinear_exact(probs: np.ndarray, rows: _Taps, cols: _Taps) -> np.ndarray:
  """`ops.masks._bilinear_sample`'s values: [h, w] float64.

  The same sum of (w_row_a * w_col_b) * tap over (a, b), in the same order; gathering
  rows first, then columns, reads the same taps.
  """
  image = probs.astype(np.float64)
  out = np.zeros((len(rows.index0), len(cols.index0)))
  for row_index, row_weight in ((rows.index0, rows.exact0), (rows.index1, rows.exact1)):
    picked = image[row_index]  # [h, M]
    for col_index, col_weight in ((cols.index0, cols.exact0), (cols.index1, cols.exact1)):
      term = np.multiply.outer(row_weight, col_weight)
      term *= picked[:, col_index]
      out += term
  return out


def _separable(probs: np.ndarray, rows: _Taps, cols: _Taps) -> np.ndarray:
  """`ops.masks.separable_interpolate` with float32 taps: [h, w], torchvision's float32
  arithmetic exactly."""
  return mask_ops.separable_interpolate(
      probs, (rows.index0, rows.index1, rows.weight0, rows.weight1),
      (cols.index0, cols.index1, cols.weight0, cols.weight1))


# The float32 separable values are within 7 * 2^-24 * max|probs| of the exact sum (seven
# roundings; each axis' weights sum to 1), the float64 reference within 2^-50 * max|probs|:
# farther than _BAND * (max|probs| + |threshold|) from the threshold both decide alike.
_BAND = 1e-5


def _bilinear_region(probs: np.ndarray, rows: _Taps, cols: _Taps, threshold: float,
                     probs_max: float) -> np.ndarray:
  """`paste_mask(method='bilinear')` over the region, `_framed`: [h + 2, w] bool.

  Computed separably in float32; the few pixels within `_BAND` of the threshold are
  recomputed as `_bilinear_exact`, so every decision is the float64 reference's.
  """
  framed = _framed(len(rows.index0), len(cols.index0))
  decided = framed[1:-1]
  threshold = float(threshold)
  if not (probs_max < 1e30 and abs(threshold) < 1e30):  # non-finite, or float32 overflow
    np.greater_equal(_bilinear_exact(probs, rows, cols), threshold, out=decided)
    return framed
  values = _separable(probs.astype(np.float32, copy=False), rows, cols)
  band = _BAND * (probs_max + abs(threshold)) + 1e-30
  np.greater(values, np.float32(threshold + band), out=decided)
  maybe = values >= np.float32(threshold - band)
  if np.count_nonzero(maybe) != np.count_nonzero(decided):
    near = maybe ^ decided  # [h, w] the pixels float32 cannot decide
    near_rows = np.flatnonzero(near.any(axis=1))
    near_cols = np.flatnonzero(near.any(axis=0))
    exact = _bilinear_exact(probs, rows.pick(near_rows), cols.pick(near_cols)) >= threshold
    grid = np.ix_(near_rows, near_cols)
    decided[grid] = np.where(near[grid], exact, decided[grid])
  return framed


def _torchvision_region(padded: np.ndarray, rows: _Taps, cols: _Taps,
                        threshold: float) -> np.ndarray:
  """`ops.masks.torchvision_region`'s region, `_framed`: [h + 2, w] bool."""
  framed = _framed(len(rows.index0), len(cols.index0))
  np.greater(_separable(padded, rows, cols), np.float32(threshold), out=framed[1:-1])
  return framed


def _pasted_regions(mask_probs: np.ndarray, boxes: np.ndarray, height: int, width: int,
                    threshold: float, method: str
                    ) -> Iterator[tuple[np.ndarray, int, int]]:
  """`paste_region` of n detections, each region `_framed`.

  Args:
    mask_probs: [n, M, M] float mask probabilities.
    boxes: [n, 4] float64 x1y1x2y2 image pixels.
  """
  if method == 'bilinear':
    rows = _bilinear_taps(boxes[:, 1], boxes[:, 3], mask_probs.shape[1], height)
    cols = _bilinear_taps(boxes[:, 0], boxes[:, 2], mask_probs.shape[2], width)
    probs_max = np.abs(mask_probs).max(axis=(1, 2)).tolist() if mask_probs.size else []
  elif method == 'torchvision':
    size = mask_probs.shape[-1]
    padded = np.pad(mask_probs.astype(np.float32), ((0, 0), (1, 1), (1, 1)))
    boxes = boxes.astype(np.float32)
    rows = _torchvision_taps(boxes[:, 1], boxes[:, 3], size, height)
    cols = _torchvision_taps(boxes[:, 0], boxes[:, 2], size, width)
  else:
    raise ValueError(f"method must be 'bilinear' or 'torchvision'; got {method!r}")
  for k, (row_taps, col_taps) in enumerate(zip(rows, cols)):
    if not (len(row_taps.index0) and len(col_taps.index0)):
      yield _framed(0, 0), 0, 0
    elif method == 'bilinear':
      yield (_bilinear_region(mask_probs[k], row_taps, col_taps, threshold, probs_max[k]),
             row_taps.start, col_taps.start)
    else:
      yield (_torchvision_region(padded[k], row_taps, col_taps, threshold),
             row_taps.start, col_taps.start)


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
  (framed, row0, col0), = _pasted_regions(mask_probs[None], box[None], height, width,
                                          threshold, method)
  return framed[1:-1], row0, col0


def _runs(pasted: Iterable[tuple[np.ndarray, int, int]], height: int,
          width: int) -> list[np.ndarray]:
  """`region_runs` of n `_framed` regions (framed [h + 2, w], row0, col0), computed
  together: per region only its run starts and ends are found."""
  total = height * width
  steps, regions = [], []
  for framed, row0, col0 in pasted:
    # (i, j) of [h + 1, w]: a run of 1s starts or ends at region row i of column j.
    steps.append((framed[1:] != framed[:-1]).ravel().nonzero()[0])
    regions.append((framed.shape[1], row0, col0))
  n = len(steps)
  if not n:
    return []
  lengths = np.array([len(k) for k in steps])
  widths, row0s, col0s = (np.repeat(v, lengths) for v in np.array(regions).T)
  rows, cols = np.divmod(np.concatenate(steps), widths)
  # Column-major positions, mask k's offset by k * (total + 1): one sort orders each
  # mask's starts and ends, which then alternate.
  owners = np.repeat(np.arange(n), lengths)
  keys = (cols + col0s) * height + rows + row0s + owners * (total + 1)
  keys.sort()
  # A run ending at a column's last row and one starting at the next column's first row
  # are one run in column-major order.
  joined = keys[1:] == keys[:-1]
  if joined.any():
    keep = np.ones(len(keys), bool)
    keep[1:] &= ~joined
    keep[:-1] &= ~joined
    keys, owners = keys[keep], owners[keep]
    lengths = np.bincount(owners, minlength=n)
  positions = keys - owners * (total + 1)
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  # Mask k's run edges are 0, its positions, total; its counts their differences.
  counts = (np.insert(positions, offsets[1:], total) -
            np.insert(positions, offsets[:-1], 0))
  bounds = (offsets + np.arange(n + 1)).tolist()
  runs = [counts[b0:b1] for b0, b1 in zip(bounds[:-1], bounds[1:])]
  return [r[:-1] if r[-1] == 0 and len(r) > 1 else r for r in runs]


def region_runs(region: np.ndarray, row0: int, col0: int, height: int,
                width: int) -> np.ndarray:
  """COCO (column-major) uncompressed RLE counts of the full mask holding `region`.

  Args:
    region: [h, w] bool, placed at (row0, col0) of a [height, width] mask.

  Returns:
    counts: [k] int64, alternating runs of 0s and 1s starting with 0s, summing to
    height * width, no empty run except possibly the first (as pycocotools' encode).
  """
  framed = _framed(*region.shape)
  framed[1:-1] = region
  return _runs([(framed, row0, col0)], height, width)[0]


def _compress(runs: list[np.ndarray], height: int, width: int) -> list[dict[str, Any]]:
  """Uncompressed RLE counts of [height, width] masks -> COCO compressed RLEs (str
  counts, JSON-ready), with one pycocotools call."""
  if not runs:
    return []
  rles = mask_util.frPyObjects([{'counts': r, 'size': [height, width]} for r in runs],
                               height, width)
  return [{'size': [height, width], 'counts': rle['counts'].decode('ascii')}
          for rle in rles]


def encode_region(region: np.ndarray, row0: int, col0: int, height: int,
                  width: int) -> dict[str, Any]:
  """COCO compressed RLE (str counts, JSON-ready) of the full mask holding `region`."""
  return _compress([region_runs(region, row0, col0, height, width)], height, width)[0]


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
  corners = boxes.astype(np.float64)
  xywh = np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], axis=1)
  commons = [{'image_id': int(image_id), 'category_id': int(category_ids[label - 1]),
              'score': score}
             for label, score in zip(np.asarray(classes).astype(np.int64).tolist(),
                                     np.asarray(scores, np.float64).tolist())]
  bbox_results = [dict(common, bbox=bbox) for common, bbox in zip(commons, xywh.tolist())]
  if not with_masks:
    return bbox_results, []
  runs = _runs(_pasted_regions(mask_probs, corners, height, width, mask_threshold,
                               mask_paste), height, width)
  segm_results = [dict(common, segmentation=rle) for common, rle in
                  zip(commons, _compress(runs, height, width))]
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
        outputs['masks'][i][keep] if 'masks' in outputs else None, int(image_id),
        outputs['image_info'][i], original_hw[i],
        category_ids, mask_threshold, mask_paste)
    bbox_results += boxes
    segm_results += segms
  return bbox_results, segm_results


def num_workers(requested: int) -> int:
  """`eval.host_workers`: -1 -> one process per core (at most 8); 0 -> none."""
  if requested < -1:
    raise ValueError(f'config.eval.host_workers must be -1, 0 or positive; got {requested}')
  return min(os.cpu_count() or 1, 8) if requested == -1 else requested


def process_pool(workers: int, started: bool = False
                 ) -> concurrent.futures.ProcessPoolExecutor:
  """`workers` >= 1 spawned processes (for `batch_results`, or coco_eval's tables).

  Every process is launched here, with one no-op task each, while `__main__` is a bare
  module: a spawned process otherwise re-runs the imports of the parent's main script
  (a script's: jax, the trainer; ~3 s of CPU per process) that the workers never use.
  With `started`, this returns only once every process has run its task (each waits at
  a barrier for the others), so a timed run that follows measures no start-up.
  """
  context = multiprocessing.get_context('spawn')
  barrier = context.Barrier(workers) if started else None
  pool = concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=context, initializer=_keep_barrier, initargs=(barrier,))
  main = sys.modules['__main__']
  sys.modules['__main__'] = types.ModuleType('__main__')
  try:  # each submit launches a process while none is idle
    first_tasks = [pool.submit(_wait_for_all_workers) for _ in range(workers)]
  finally:
    sys.modules['__main__'] = main
  if started:
    for future in first_tasks:
      future.result()
  return pool


_barrier = None  # a worker process's start barrier (`process_pool(started=True)`)


def _keep_barrier(barrier: Any) -> None:
  global _barrier  # pylint: disable=global-statement
  _barrier = barrier


def _wait_for_all_workers() -> None:
  if _barrier is not None:
    _barrier.wait(timeout=300)
