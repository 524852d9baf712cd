"""COCO segmentations (polygons, compressed or uncompressed RLE) checked and decoded (host).

Everything becomes one compressed RLE per instance (`segmentation_to_rle`), the form the
input pipeline crops from (`mask_crops.crop_and_resize_rles`) and pycocotools decodes;
`decompress_counts` reads compressed RLE strings without pycocotools, many at once.
"""

from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_util

from maskrcnn_jax.data import structures


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


def segment_cumsum(values: np.ndarray, segment_starts: np.ndarray) -> np.ndarray:
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
  runs = np.where(odd, segment_cumsum(np.where(odd, values, 0), starts),
                  np.where(even, segment_cumsum(np.where(even, values, 0), starts), values))
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


def instance_rle(record: structures.ImageRecord, index: int) -> dict[str, Any]:
  """Instance `index` of the record as one compressed RLE (`segmentation_to_rle`).

  A malformed segmentation, or none (a box-only instance), raises CocoFormatError naming
  the file and annotation id.
  """
  if record.segmentations[index] is None:
    raise structures.CocoFormatError(
        f'{record.source}: annotation id {record.annotation_ids[index]}: no segmentation (a '
        'box-only instance: train it with --config.model.mask_head.enabled=False)')
  try:
    return segmentation_to_rle(record.segmentations[index], record.height, record.width)
  except ValueError as e:
    raise structures.CocoFormatError(
        f'{record.source}: annotation id {record.annotation_ids[index]}: {e}') from e


def decode_masks(record: structures.ImageRecord, indices: Sequence[int] | None = None
                 ) -> np.ndarray:
  """Rasterizes the record's instances (all, or those at `indices`).

  Returns:
    masks: [n, height, width] uint8 in {0, 1}; zeros for a box-only instance.
  """
  indices = range(record.num_instances) if indices is None else indices
  masks = np.zeros((len(indices), record.height, record.width), np.uint8)
  for out, i in enumerate(indices):
    if record.segmentations[i] is not None:
      masks[out] = mask_util.decode(instance_rle(record, i))
  return masks
