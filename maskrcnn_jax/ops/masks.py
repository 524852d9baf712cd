"""Instance masks: COCO decoding, box crops and pasting (host), mask-head targets (device).

Host-side functions (`segmentation_to_mask`, `crop_and_resize_mask`, `paste_mask`) are
NumPy + pycocotools and never touch jax; importing this module does not import jax, so
the data pipeline can use it. `mask_targets` is pure jnp (jit/vmap-able) and imports jax
when called.

Coordinates: boxes are `[x1, y1, x2, y2]` in continuous pixels (pixel i covers [i, i+1),
its center is i + 0.5). Bilinear sampling reads zeros outside the source array, per tap
(as `F.grid_sample(..., padding_mode='zeros', align_corners=False)`).
"""

from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_util


def _check_polygon(polygon: Any) -> list[float]:
  """One COCO polygon `[x0, y0, x1, y1, ...]` -> a validated list of floats."""
  coords = np.asarray(polygon, dtype=np.float64)
  if coords.ndim != 1 or coords.size % 2 or coords.size < 6:
    raise ValueError(
        f'a polygon must be a flat list [x0, y0, x1, y1, ...] of at least 3 points; '
        f'got shape {coords.shape}')
  if not np.all(np.isfinite(coords)):
    raise ValueError('polygon coordinates must be finite')
  return coords.tolist()


def _segment_cumsum(values: np.ndarray, segment_starts: np.ndarray) -> np.ndarray:
  """Cumulative sums of `values` restarting at each of the sorted `segment_starts` (the
  first is 0)."""
  total = np.cumsum(values)
  before = np.concatenate([[0], total[segment_starts[1:] - 1]])
  lengths = np.diff(np.concatenate([segment_starts, [values.size]]))
  return total - np.repeat(before, lengths)


def decompress_counts(strings: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
  """COCO compressed RLE strings -> their run lengths, all at once (pycocotools'
  `rleFrString`).

  Each number is 5-bit groups, least significant first, 48 added to each; 0x20 marks a
  group with more to come and 0x10 in the last group the sign. From the fourth on, a
  number is stored as the difference from the one two before it (sic, as pycocotools).

  Returns:
    runs: [total] int64, the runs of every string in turn.
    offsets: [len(strings) + 1] int64; string k's runs are runs[offsets[k]:offsets[k + 1]].

  Raises:
    ValueError: a string that ends in the middle of a number, or a number over 60 bits.
  """
  lengths = np.array([len(s) for s in strings], np.int64)
  if not lengths.sum():
    return np.zeros(0, np.int64), np.zeros(len(strings) + 1, np.int64)
  chars = np.frombuffer(b''.join(strings), np.uint8).astype(np.int64) - 48
  last = (chars & 0x20) == 0  # the last group of each number
  if not np.all(last[np.cumsum(lengths)[lengths > 0] - 1]):
    raise ValueError('compressed RLE counts end in the middle of a number')
  ends = np.flatnonzero(last)
  number_starts = np.concatenate([[0], ends[:-1] + 1])
  group = np.arange(chars.size) - np.repeat(number_starts, ends - number_starts + 1)
  if group.max() > 11:
    raise ValueError('compressed RLE counts hold a number of more than 60 bits')
  values = np.add.reduceat((chars & 0x1f) << (5 * group), number_starts)
  values -= ((chars[ends] & 0x10) != 0) << (5 * (group[ends] + 1))  # sign extension
  # Runs per string; from the fourth, run m = its value + run m - 2.
  numbers_per_string = np.bincount(np.repeat(np.arange(len(strings)), lengths)[ends],
                                   minlength=len(strings))
  offsets = np.concatenate([[0], np.cumsum(numbers_per_string)])
  starts = offsets[:-1][numbers_per_string > 0]
  place = np.arange(values.size) - np.repeat(offsets[:-1], numbers_per_string)
  odd, even = place % 2 == 1, (place % 2 == 0) & (place > 0)
  runs = np.where(odd, _segment_cumsum(np.where(odd, values, 0), starts),
                  np.where(even, _segment_cumsum(np.where(even, values, 0), starts), values))
  return runs, offsets


def _decompress_counts(counts: bytes) -> np.ndarray:
  """One compressed RLE string -> its run lengths [m] int64 (`decompress_counts`)."""
  return decompress_counts([counts])[0]


def _check_runs(runs: Sequence[int] | np.ndarray, height: int, width: int) -> None:
  runs = np.asarray(runs, np.int64)
  if np.any(runs < 0):
    raise ValueError('RLE counts must be non-negative')
  if int(runs.sum()) != height * width:
    raise ValueError(
        f'RLE counts sum to {int(runs.sum())} pixels, but the image has {height} x '
        f'{width} = {height * width}')


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
  """A COCO `segmentation`, checked, as one compressed RLE (host side, pycocotools).

  Args:
    segmentation: polygons (list of flat `[x0, y0, x1, y1, ...]` lists, merged into one
      mask), compressed RLE (`{'counts': str | bytes, 'size': [h, w]}`) or uncompressed
      RLE (`{'counts': list[int], 'size': [h, w]}`), as in COCO annotation files.
    height: image height in pixels.
    width: image width in pixels.

  Returns:
    {'counts': bytes, 'size': [height, width]}: column-major runs, starting with zeros.

  Raises:
    ValueError: malformed segmentation (a polygon with fewer than 3 points or an odd
      number of coordinates, no polygons, RLE size not [height, width], RLE counts not
      covering the image, unknown type). The caller adds file and annotation id.
  """
  if isinstance(segmentation, (list, tuple)):
    if not segmentation:
      raise ValueError('polygon segmentation has no polygons')
    polygons = [_check_polygon(polygon) for polygon in segmentation]
    return mask_util.merge(mask_util.frPyObjects(polygons, height, width))
  if not isinstance(segmentation, dict):
    raise ValueError(
        f'segmentation must be a list of polygons or an RLE dict; got '
        f'{type(segmentation).__name__}')
  if set(segmentation) != {'counts', 'size'}:
    raise ValueError(
        f"RLE segmentation must have keys 'counts' and 'size'; got {sorted(segmentation)}")
  size = [int(s) for s in segmentation['size']]
  if size != [height, width]:
    raise ValueError(f'RLE size {size} does not match the image size {[height, width]}')
  counts = segmentation['counts']
  if isinstance(counts, str):
    counts = counts.encode('ascii')
  if isinstance(counts, bytes):
    # Checked here because pycocotools decodes a bad string past the end of its buffer.
    _check_runs(_decompress_counts(counts), height, width)
    return {'counts': counts, 'size': size}
  if isinstance(counts, (list, tuple)):
    _check_runs([int(run) for run in counts], height, width)
    return mask_util.frPyObjects({'counts': list(counts), 'size': size}, height, width)
  raise ValueError(f'RLE counts must be str, bytes or a list; got {type(counts).__name__}')


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
  """Rasterizes a COCO `segmentation` (`segmentation_to_rle`'s arguments and errors).

  Returns:
    mask: [height, width] uint8 in {0, 1}, row-major.
  """
  mask = mask_util.decode(segmentation_to_rle(segmentation, height, width))
  return np.ascontiguousarray(mask, dtype=np.uint8)


def _linear_taps(coords: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Linear interpolation taps along one axis, zero weight outside [0, size).

  Args:
    coords: [n] float64 sample positions in pixel-index coordinates.
    size: length of the sampled axis.

  Returns:
    indices: [n, 2] int64 in [0, size), safe to gather.
    weights: [n, 2] float64.
  """
  lower = np.floor(coords)
  frac = coords - lower
  indices = lower.astype(np.int64)[:, None] + np.array([0, 1])
  weights = np.stack([1.0 - frac, frac], axis=-1)
  weights = np.where((indices >= 0) & (indices < size), weights, 0.0)
  return np.clip(indices, 0, size - 1), weights


def _bilinear_sample(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
  """Samples `image` [H, W] on the grid ys [h] x xs [w] -> [h, w] float64 (zeros outside).

  Reads only the window of `image` that the taps touch (copied once, row-major), and
  gathers rows before columns.
  """
  rows, row_weights = _linear_taps(ys, image.shape[0])
  cols, col_weights = _linear_taps(xs, image.shape[1])
  top, left = rows.min(), cols.min()
  window = np.ascontiguousarray(image[top:rows.max() + 1, left:cols.max() + 1])
  rows, cols = rows - top, cols - left
  out = np.zeros((len(ys), len(xs)))
  for a in range(2):
    band = window[rows[:, a]]
    for b in range(2):
      taps = band[:, cols[:, b]].astype(np.float64)
      out += row_weights[:, a, None] * col_weights[None, :, b] * taps
  return out


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
  values = _bilinear_sample(mask, _bin_centers(y1, y2, size), _bin_centers(x1, x2, size))
  return (values >= 0.5).astype(np.uint8)


def _ranges(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Concatenated `arange(start, stop)` of n ranges: positions [T] int64, offsets [n + 1]
  int64 (range k is positions[offsets[k]:offsets[k + 1]]; empty where stop <= start)."""
  lengths = np.maximum(stops - starts, 0)
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  return np.arange(offsets[-1]) + np.repeat(starts - offsets[:-1], lengths), offsets


def bilinear_paste_coords(lo: np.ndarray, hi: np.ndarray, mask_size: int, length: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Detectron2's paste along one image axis, for n boxes: the pixels it computes.

  Args:
    lo, hi: [n] float64 box sides on this axis (x1, x2 or y1, y2), image pixels.
    mask_size: mask cells on this axis.
    length: image pixels on this axis.

  Returns:
    start: [n] int64 first pixel of each box's range.
    offsets: [n + 1] int64; box k's pixels are start[k] + (0 .. offsets[k + 1] -
      offsets[k] - 1): none for a degenerate (hi <= lo) or non-finite box.
    coords: [T] float64 those pixels' centers in mask-cell coordinates
      (grid_sample, align_corners=False), concatenated.
  """
  valid = (hi > lo) & np.isfinite(lo) & np.isfinite(hi)
  lo, hi = np.where(valid, lo, 0.0), np.where(valid, hi, 1.0)
  # Outside the box grown by one mask cell every sample reads only zero padding.
  margin = (hi - lo) / mask_size
  start = np.clip(np.floor(lo - margin), 0, length).astype(np.int64)
  stop = np.where(valid, np.clip(np.ceil(hi + margin) + 1, 0, length), 0).astype(np.int64)
  positions, offsets = _ranges(start, stop)
  lengths = np.diff(offsets)
  scale = np.repeat(mask_size / (hi - lo), lengths)
  coords = (positions + 0.5 - np.repeat(lo, lengths)) * scale - 0.5
  return start, offsets, coords


def _paste_bilinear(mask_probs: np.ndarray, box: np.ndarray, height: int, width: int,
                    threshold: float) -> np.ndarray:
  """Detectron2 `paste_masks_in_image` for one mask ([M, M] -> [height, width] bool)."""
  out = np.zeros((height, width), bool)
  (row0,), _, ys = bilinear_paste_coords(box[1:2], box[3:4], mask_probs.shape[0], height)
  (col0,), _, xs = bilinear_paste_coords(box[0:1], box[2:3], mask_probs.shape[1], width)
  if len(ys) and len(xs):
    out[row0:row0 + len(ys), col0:col0 + len(xs)] = (
        _bilinear_sample(mask_probs, ys, xs) >= threshold)
  return out


def torch_bilinear_taps(in_size: int, out_indices: np.ndarray, out_size: int | np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Taps of `F.interpolate(mode='bilinear', align_corners=False)` along one axis.

  Host side (NumPy); also what data.transforms.resize_image resizes images with.
  float32 arithmetic in the order of PyTorch's CPU kernel (`compute_source_index_and_lambda`).

  Args:
    in_size: input length.
    out_indices: [n] int64 output positions to compute.
    out_size: full output length, or [n] int64 one per position (n resizes at once).

  Returns:
    index0, index1: [n] int64; lambda0, lambda1: [n] float32.
  """
  same = np.asarray(out_size) == in_size  # torch copies: one tap of weight 1
  if np.all(same):
    ones = np.ones(len(out_indices), np.float32)
    return out_indices, out_indices, ones, np.zeros_like(ones)
  scale = np.float32(in_size) / np.asarray(out_size, np.float32)
  src = scale * (out_indices.astype(np.float32) + np.float32(0.5)) - np.float32(0.5)
  src = np.maximum(src, np.float32(0))
  index0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  lambda1 = np.clip(src - index0.astype(np.float32), np.float32(0), np.float32(1))
  index1 = np.where(index0 < in_size - 1, index0 + 1, index0)
  lambda0 = np.float32(1) - lambda1
  if np.any(same):
    index0 = np.where(same, out_indices, index0)
    index1 = np.where(same, out_indices, index1)
    lambda0 = np.where(same, np.float32(1), lambda0)
    lambda1 = np.where(same, np.float32(0), lambda1)
  return index0, index1, lambda0, lambda1


def torchvision_paste_taps(lo: np.ndarray, hi: np.ndarray, mask_size: int, length: int
                           ) -> tuple[np.ndarray, ...]:
  """torchvision's paste (`paste_masks_in_image`, padding 1) along one image axis, for
  n boxes: the pixels it computes and their taps into the mask padded by 1.

  Args:
    lo, hi: [n] float32 box sides on this axis (x1, x2 or y1, y2), image pixels.
    mask_size: M, the side of the (square) mask before padding.
    length: image pixels on this axis.

  Returns:
    start: [n] int64 first pixel of each box's range.
    offsets: [n + 1] int64; box k's pixels are start[k] + (0 .. offsets[k + 1] -
      offsets[k] - 1) (none for a non-finite box).
    index0, index1: [T] int64 rows (columns) of the [M + 2, M + 2] padded mask.
    weight0, weight1: [T] float32, concatenated over the boxes.
  """
  # expand_boxes, in float32 as torch, then truncation toward zero (`.to(torch.int64)`).
  scale = np.float32((mask_size + 2) / mask_size)
  half = (hi - lo) * np.float32(0.5) * scale
  center = (hi + lo) * np.float32(0.5)
  lo_expanded, hi_expanded = center - half, center + half
  valid = np.isfinite(lo_expanded) & np.isfinite(hi_expanded)
  box0 = np.where(valid, lo_expanded, 0).astype(np.int64)
  box1 = np.where(valid, hi_expanded, -1).astype(np.int64)
  # paste_mask_in_image: resize to the integer box (+1), copy its part inside the image.
  box_length = np.maximum(box1 - box0 + 1, 1)
  start = np.clip(box0, 0, length)
  positions, offsets = _ranges(start, np.where(valid, np.minimum(box1 + 1, length), 0))
  lengths = np.diff(offsets)
  taps = torch_bilinear_taps(mask_size + 2, positions - np.repeat(box0, lengths),
                             np.repeat(box_length, lengths))
  return (start, offsets) + taps


def separable_interpolate(image: np.ndarray, rows: Sequence[np.ndarray],
                          cols: Sequence[np.ndarray]) -> np.ndarray:
  """Two-tap interpolation of [R, C] `image`: columns first, then rows -> [h, w].

  rows: (index0, index1, weight0, weight1), each [h]; cols the same, each [w]. Pixel
  (i, j) is (image[r0, c0] * wc0 + image[r0, c1] * wc1) * wr0 + (the same on r1) * wr1,
  torchvision's paste arithmetic in its order; the column pass is done once per image
  row, not once per output row.
  """
  r0, r1, wr0, wr1 = rows
  c0, c1, wc0, wc1 = cols
  by_row = image[:, c0] * wc0  # [R, w]
  by_row += image[:, c1] * wc1
  values = by_row.take(r0, axis=0)  # [h, w]
  values *= wr0[:, None]
  lower = by_row.take(r1, axis=0)
  lower *= wr1[:, None]
  values += lower
  return values


def torchvision_region(mask_probs: np.ndarray, box: np.ndarray, height: int, width: int,
                       threshold: float) -> tuple[np.ndarray, int, int]:
  """torchvision `paste_masks_in_image` (padding 1) for one mask, over the pixels it
  computes: ([h, w] bool thresholded > threshold, row0, col0) of the image."""
  size = mask_probs.shape[-1]
  padded = np.pad(mask_probs.astype(np.float32), 1)
  box = box.astype(np.float32)
  (row0,), _, r0, r1, wr0, wr1 = torchvision_paste_taps(box[1:2], box[3:4], size, height)
  (col0,), _, c0, c1, wc0, wc1 = torchvision_paste_taps(box[0:1], box[2:3], size, width)
  if not (len(r0) and len(c0)):
    return np.zeros((0, 0), bool), 0, 0
  values = separable_interpolate(padded, (r0, r1, wr0, wr1), (c0, c1, wc0, wc1))
  return values > np.float32(threshold), int(row0), int(col0)


def _paste_torchvision(mask_probs: np.ndarray, box: np.ndarray, height: int, width: int,
                       threshold: float) -> np.ndarray:
  """`torchvision_region` placed into an [height, width] bool image."""
  out = np.zeros((height, width), bool)
  region, row0, col0 = torchvision_region(mask_probs, box, height, width, threshold)
  out[row0:row0 + region.shape[0], col0:col0 + region.shape[1]] = region
  return out


def paste_mask(mask_probs: np.ndarray, box: Sequence[float], height: int, width: int,
               threshold: float = 0.5, method: str = 'bilinear') -> np.ndarray:
  """Pastes one mask-head output into the image (host side, NumPy).

  Only the pixels near the box are computed; the rest of the image is False.

  Args:
    mask_probs: [M, M] float probabilities over `box`.
    box: [4] float, x1y1x2y2 pixels of the target image.
    height: target image height.
    width: target image width.
    threshold: probability threshold.
    method: 'bilinear': Detectron2 `paste_masks_in_image` (pixel centers mapped into the
      box, `grid_sample` with align_corners=False and zeros outside the mask, then
      >= threshold); a degenerate box pastes nothing. 'torchvision':
      torchvision.models.detection.roi_heads.paste_mask_in_image (box expanded by
      (M + 2) / M and truncated to integers, mask padded by 1, bilinear resize to the
      integer box size + 1, float32 as torch), then > threshold.

  Returns:
    mask: [height, width] bool.
  """
  mask_probs = np.asarray(mask_probs)
  box = np.asarray(box, dtype=np.float64)
  if mask_probs.ndim != 2 or box.shape != (4,):
    raise ValueError(
        f'expected mask_probs [M, M] and box [4]; got {mask_probs.shape} and {box.shape}')
  if method == 'bilinear':
    return _paste_bilinear(mask_probs, box, height, width, threshold)
  if method == 'torchvision':
    return _paste_torchvision(mask_probs, box, height, width, threshold)
  raise ValueError(f"method must be 'bilinear' or 'torchvision'; got {method!r}")


def mask_targets(gt_mask_crops, gt_boxes, rois, matched_gt, output_size: int = 28):
  """Mask-head targets: each RoI's matched gt mask, resampled onto the RoI's bins (jnp).

  Each of the output_size^2 bin centers of a RoI is mapped into its gt box frame and
  the gt crop is sampled bilinearly there (zeros outside the crop), then >= 0.5; so
  bins outside the gt box are 0. Pure jnp, usable under jit and vmap.

  Args:
    gt_mask_crops: [N, S, S] uint8 / float, gt masks cropped to their boxes.
    gt_boxes: [N, 4] float32, x1y1x2y2 (any frame, the same as `rois`).
    rois: [R, 4] float32, x1y1x2y2.
    matched_gt: [R] int32 index into the gt arrays.
    output_size: side O of the targets (static).

  Returns:
    targets: [R, output_size, output_size] float32 in {0., 1.}; all zeros where the
      matched gt box is degenerate.
  """
  import jax  # pylint: disable=import-outside-toplevel  # keeps the module import jax-free
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  crop_size = gt_mask_crops.shape[-1]
  crops = jnp.take(gt_mask_crops, matched_gt, axis=0).astype(jnp.float32)  # [R, S, S]
  gt = jnp.take(gt_boxes, matched_gt, axis=0).astype(jnp.float32)  # [R, 4]
  rois = rois.astype(jnp.float32)

  def axis_weights(roi_lo, roi_hi, gt_lo, gt_hi):
    """[R] box sides -> [R, O, S] interpolation weights from crop cells to RoI bins."""
    gt_len = gt_hi - gt_lo
    safe_len = jnp.where(gt_len > 0, gt_len, 1.0)
    # Bin j center in crop-cell coordinates: start + j * step. Written so that a RoI
    # equal to its gt box gives exact coordinates (ties at weight 0.5 stay ties).
    step = (roi_hi - roi_lo) / safe_len * (crop_size / output_size)
    start = (roi_lo - gt_lo) * (crop_size / safe_len) - 0.5 + 0.5 * step
    coords = start[:, None] + jnp.arange(output_size, dtype=jnp.float32) * step[:, None]
    # Linear interpolation as a tent: weight max(0, 1 - |coord - cell|), 0 off the crop.
    weights = jnp.maximum(
        0.0, 1.0 - jnp.abs(coords[..., None] - jnp.arange(crop_size, dtype=jnp.float32)))
    return jnp.where((gt_len > 0)[:, None, None], weights, 0.0)

  row_weights = axis_weights(rois[:, 1], rois[:, 3], gt[:, 1], gt[:, 3])  # [R, O, S]
  col_weights = axis_weights(rois[:, 0], rois[:, 2], gt[:, 0], gt[:, 2])  # [R, O, S]
  highest = jax.lax.Precision.HIGHEST  # no bf16/tf32 passes: values are thresholded at 0.5
  rows = jnp.einsum('rik,rkl->ril', row_weights, crops, precision=highest)
  values = jnp.einsum('ril,rjl->rij', rows, col_weights, precision=highest)
  return (values >= 0.5).astype(jnp.float32)
