"""Ground-truth masks cropped to their boxes and resized to S x S (host side, NumPy).

`crop_and_resize_mask(mask, box, S)` is the definition: a bilinear sample at each of the
S x S bin centers of the box (zeros outside the mask), then >= 0.5.
`crop_and_resize_rles(rles, boxes, S)` gives the same pixels for every instance of an
image straight from their COCO RLEs, without decoding whole images: pycocotools writes
every pixel of the image one byte at a time, while a box crop reads only the window of
pixels its bilinear taps touch.

How. The runs of every instance (`mask_decoding.decompress_counts`) give the
column-major positions where the mask flips; a pixel's value is the parity of the flips
at or before it. Each instance's window (the rows and columns of its taps) is laid out
column by column in one flat buffer; each flip inside a window and each window column's
starting parity go in as increments, and one cumulative sum mod 2 decodes every window.
The crops are then `crop_and_resize_mask`'s bilinear threshold, every instance at once,
each sum formed in the same order (so the same bits).
"""

from typing import Any, Sequence

import numpy as np

from maskrcnn_jax.data import interpolation
from maskrcnn_jax.data import mask_decoding


def _bin_centers(lo: float, hi: float, size: int) -> np.ndarray:
  """[size] pixel-index coordinates of the centers of `size` bins over [lo, hi]."""
  return lo + (np.arange(size) + 0.5) * ((hi - lo) / size) - 0.5


def crop_and_resize_mask(mask: np.ndarray, box: Sequence[float], size: int) -> np.ndarray:
  """Crops `box` out of a mask and resizes it to size x size (host side, NumPy).

  Bilinear sample at the bin centers `x = x1 + (j + 0.5) * (x2 - x1) / size - 0.5`
  (pixel-index coordinates; zeros outside the mask), then threshold >= 0.5.

  Args:
    mask: [H, W] uint8 (or bool / float) in {0, 1}.
    box: [4] float, x1y1x2y2 in pixels of `mask`.
    size: output side S.

  Returns:
    crop: [size, size] uint8 in {0, 1}; all zeros for a degenerate box.
  """
  x1, y1, x2, y2 = (float(v) for v in box)
  if not (x2 > x1 and y2 > y1):
    return np.zeros((size, size), np.uint8)
  values = interpolation.bilinear_sample(mask, _bin_centers(y1, y2, size),
                                         _bin_centers(x1, x2, size))
  return (values >= 0.5).astype(np.uint8)


def _axis_taps(lo: np.ndarray, hi: np.ndarray, size: int, length: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
  """Bilinear taps of `size` bin centers over [lo, hi] (`_bin_centers`) per row.

  Args:
    lo, hi: [n, 2] float64 box sides (y, x).
    size: the crop side S.
    length: [2] the image's height and width.

  Returns:
    indices: [n, 2, S, 2] int64 in [0, length), the two taps of each bin center.
    weights: [n, 2, S, 2] float64, zero for a tap outside.
  """
  coords = lo[..., None] + (np.arange(size) + 0.5) * ((hi - lo) / size)[..., None] - 0.5
  lower = np.floor(coords)
  frac = coords - lower
  first = lower.astype(np.int64)
  indices = np.stack([first, first + 1], axis=-1)
  weights = np.stack([1.0 - frac, frac], axis=-1)
  limit = length[:, None, None]
  outside = (indices < 0) | (indices >= limit)
  weights[outside] = 0.0
  return np.clip(indices, 0, limit - 1), weights


def _decode_windows(rles: Sequence[dict[str, Any]], height: int, width: int,
                    top: np.ndarray, bottom: np.ndarray, left: np.ndarray,
                    right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Rows [top, bottom) x columns [left, right) of each RLE's mask.

  Returns:
    values: [total] uint8 in {0, 1}; window k, column-major, is
      values[offsets[k]:offsets[k + 1]].reshape(right - left, bottom - top)[k].
    offsets: [n + 1] int64.
  """
  n = len(rles)
  runs, run_offsets = mask_decoding.decompress_counts([rle['counts'] for rle in rles])
  run_starts = run_offsets[:-1]
  ends = mask_decoding.segment_cumsum(runs, run_starts)
  is_flip = np.ones(runs.size, bool)
  is_flip[run_offsets[1:] - 1] = False  # the last run of each ends the image
  instance = np.repeat(np.arange(n), np.diff(run_offsets))
  span = height * width + 1  # keys: instance k's positions from k * span
  flip_keys = (instance * span + ends)[is_flip]
  flips_before = np.concatenate([[0], np.cumsum(np.diff(run_offsets) - 1)])[:-1]

  # Window columns of every instance, in turn.
  widths, heights = right - left, bottom - top
  offsets = np.concatenate([[0], np.cumsum(widths * heights)])
  column_instance = np.repeat(np.arange(n), widths)
  column_offsets = np.concatenate([[0], np.cumsum(widths)])
  column = np.arange(column_instance.size) - np.repeat(column_offsets[:-1] - left, widths)
  first_key = column_instance * span + column * height + top[column_instance]
  last_key = first_key + heights[column_instance] - 1
  first_cell = (offsets[column_instance]
                + (column - left[column_instance]) * heights[column_instance])

  # A column starts with the parity of its instance's flips before its first pixel, and
  # the flips inside it follow. The cumulative sum runs on across columns and windows:
  # column j's increment at its first cell undoes what it carries in from column j - 1
  # (that column's start plus its flips).
  below = np.searchsorted(flip_keys, first_key, side='left')
  start = below - flips_before[column_instance]
  inside = np.searchsorted(flip_keys, last_key, side='right') - below
  carried = np.concatenate([[0], (start + inside)[:-1]])
  increments = np.zeros(offsets[-1], np.uint8)
  increments[first_cell] = (start - carried) & 1
  owner = np.searchsorted(first_key, flip_keys, side='right') - 1
  owned = owner >= 0
  owned[owned] = flip_keys[owned] <= last_key[owner[owned]]
  np.add.at(increments, first_cell[owner[owned]] + flip_keys[owned] - first_key[owner[owned]],
            1)
  return np.cumsum(increments, dtype=np.uint8) & 1, offsets


def crop_and_resize_rles(rles: Sequence[dict[str, Any]], boxes: np.ndarray, size: int
                         ) -> np.ndarray:
  """Crops each box out of its instance's mask and resizes it to size x size.

  Exactly `crop_and_resize_mask(pycocotools.mask.decode(rle), box, size)` per
  instance (bilinear at the bin centers, zeros outside the image, threshold >= 0.5).

  Args:
    rles: n compressed RLEs {'counts': bytes, 'size': [H, W]} of one image
      (`mask_decoding.segmentation_to_rle`).
    boxes: [n, 4] float, x1y1x2y2 in pixels of the image.
    size: output side S.

  Returns:
    crops: [n, S, S] uint8 in {0, 1}; all zeros for a degenerate box.
  """
  n = len(rles)
  if not n:
    return np.zeros((0, size, size), np.uint8)
  height, width = (int(v) for v in rles[0]['size'])
  if any([int(v) for v in rle['size']] != [height, width] for rle in rles):
    raise ValueError(f'the RLEs of one image must share its size; got '
                     f'{sorted({tuple(rle["size"]) for rle in rles})}')
  boxes = np.asarray(boxes, np.float64).reshape(n, 4)
  valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  boxes = np.where(valid[:, None], boxes, [0.0, 0.0, 1.0, 1.0])
  indices, weights = _axis_taps(boxes[:, [1, 0]], boxes[:, [3, 2]], size,
                                np.array([height, width]))
  top, bottom = indices[:, 0, 0, 0], indices[:, 0, -1, 1] + 1  # taps increase
  left, right = indices[:, 1, 0, 0], indices[:, 1, -1, 1] + 1
  values, offsets = _decode_windows(rles, height, width, top, bottom, left, right)

  # taps[k, b, j, a, i]: column tap b of crop column j, row tap a of crop row i.
  taps = np.empty((n, 2 * size, 2 * size), np.uint8)
  for k in range(n):
    window = values[offsets[k]:offsets[k + 1]].reshape(right[k] - left[k],
                                                       bottom[k] - top[k])
    tap_cols = (indices[k, 1] - left[k]).T.ravel()
    tap_rows = (indices[k, 0] - top[k]).T.ravel()
    taps[k] = window[tap_cols][:, tap_rows]
  taps = taps.reshape(n, 2, size, 2, size)
  # The sum of (row weight a * column weight b) * tap over (a, b) in
  # `crop_and_resize_mask`'s order, in the transposed [n, j, i] frame.
  row_weights = np.ascontiguousarray(weights[:, 0].transpose(0, 2, 1))  # [n, a, i]
  col_weights = np.ascontiguousarray(weights[:, 1].transpose(0, 2, 1))  # [n, b, j]
  value = np.zeros((n, size, size))
  term = np.empty_like(value)
  for a in range(2):
    for b in range(2):
      np.multiply(col_weights[:, b, :, None], row_weights[:, a, None, :], out=term)
      term *= taps[:, b, :, a, :]
      value += term
  crops = (value >= 0.5).view(np.uint8)
  crops[~valid] = 0
  return np.ascontiguousarray(crops.transpose(0, 2, 1))
