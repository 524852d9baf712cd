"""Masks pasted over their box region only and RLE-encoded from it (host side, NumPy).

Each detection's mask is pasted only over the image rows and columns its box can reach
(`paste_regions`) and RLE-encoded from that region (`runs_of_regions`): the full-image
column-major runs are rebuilt from the region's run starts and ends, so no [H, W] mask
is ever made. The pixels are those of `paste.paste_mask`: torchvision's float32
arithmetic in the same order; for the bilinear paste, float32 separable values, with
the float64 reference recomputed where they are too close to the threshold to decide.
The strings are those of pycocotools' `encode` of the full mask (tests check both); one
image's masks are compressed in one call (`compress_runs`).
"""

from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
from pycocotools import mask as mask_util

from maskrcnn_jax.data import interpolation
from maskrcnn_jax.inference import paste


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
  """inference/paste.py's concatenated taps of n boxes -> n `_Taps`."""
  bounds = offsets.tolist()
  return [_Taps(s, *[a[b0:b1] for a in taps])
          for s, b0, b1 in zip(start.tolist(), bounds[:-1], bounds[1:])]


def _bilinear_taps(lo: np.ndarray, hi: np.ndarray, mask_size: int,
                   length: int) -> list[_Taps]:
  start, offsets, coords = paste.bilinear_paste_coords(lo, hi, mask_size, length)
  indices, weights = interpolation.linear_taps(coords, mask_size)
  indices, weights = np.ascontiguousarray(indices.T), np.ascontiguousarray(weights.T)
  approx = weights.astype(np.float32)
  return _split_taps(start, offsets, indices[0], indices[1], approx[0], approx[1],
                     weights[0], weights[1])


def _torchvision_taps(lo: np.ndarray, hi: np.ndarray, mask_size: int,
                      length: int) -> list[_Taps]:
  return _split_taps(*paste.torchvision_paste_taps(lo, hi, mask_size, length))


def _framed(h: int, w: int) -> np.ndarray:
  """[h + 2, w] bool zeros: a region with a 0 above and below each column (for the runs)."""
  return np.zeros((h + 2, w), bool)


def _bilinear_exact(probs: np.ndarray, rows: _Taps, cols: _Taps) -> np.ndarray:
  """`interpolation.bilinear_sample`'s values: [h, w] float64.

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
  """`interpolation.separable_interpolate` with float32 taps: [h, w], torchvision's float32
  arithmetic exactly."""
  return interpolation.separable_interpolate(
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
  """`paste.torchvision_region`'s region, `_framed`: [h + 2, w] bool."""
  framed = _framed(len(rows.index0), len(cols.index0))
  np.greater(_separable(padded, rows, cols), np.float32(threshold), out=framed[1:-1])
  return framed


def paste_regions(mask_probs: np.ndarray, boxes: np.ndarray, height: int, width: int,
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
  """`paste.paste_mask`, returned as the region it computes.

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
  (framed, row0, col0), = paste_regions(mask_probs[None], box[None], height, width,
                                        threshold, method)
  return framed[1:-1], row0, col0


def runs_of_regions(pasted: Iterable[tuple[np.ndarray, int, int]], height: int,
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
  return runs_of_regions([(framed, row0, col0)], height, width)[0]


def compress_runs(runs: list[np.ndarray], height: int, width: int) -> list[dict[str, Any]]:
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
  return compress_runs([region_runs(region, row0, col0, height, width)], height, width)[0]
