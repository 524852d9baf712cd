"""Tests for maskrcnn_jax.ops.masks against references written from the definitions."""

import functools
import json
import math
import pathlib

import jax
import numpy as np
from pycocotools import mask as mask_util
import pytest

from maskrcnn_jax.data import interpolation
from maskrcnn_jax.data import mask_crops
from maskrcnn_jax.data import mask_decoding
from maskrcnn_jax.inference import paste
from maskrcnn_jax.ops import mask_targets as mask_ops

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / 'fixtures'


def bilinear_zero_padded(image, y, x):
  """Reference: bilinear value of `image` at pixel-index point (y, x), zeros outside."""
  y0, x0 = math.floor(y), math.floor(x)
  value = 0.0
  for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
    for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
      if 0 <= yy < image.shape[0] and 0 <= xx < image.shape[1]:
        value += wy * wx * float(image[yy, xx])
  return value


def random_blob_mask(rng, height, width):
  """[height, width] uint8: a union of random discs."""
  yy, xx = np.mgrid[:height, :width] + 0.5
  mask = np.zeros((height, width), bool)
  for _ in range(4):
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    radius = rng.uniform(1, max(height, width, 6) / 3)
    mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2
  return mask.astype(np.uint8)


def uncompressed_rle(mask):
  """Reference COCO uncompressed RLE: column-major runs, starting with zeros."""
  flat = mask.T.ravel()
  counts, value, run = [], 0, 0
  for pixel in flat:
    if pixel == value:
      run += 1
    else:
      counts.append(run)
      value, run = pixel, 1
  counts.append(run)
  return {'counts': counts, 'size': list(mask.shape)}


# segmentation_to_mask


def test_polygons_match_coco_areas(coco_tiny):
  data = json.loads((coco_tiny / 'annotations' / 'instances_val2017.json').read_text())
  images = {image['id']: image for image in data['images']}
  total_pixels, total_area = 0, 0.0
  for ann in data['annotations']:
    if ann['iscrowd']:
      continue
    image = images[ann['image_id']]
    mask = mask_decoding.segmentation_to_mask(ann['segmentation'], image['height'], image['width'])
    assert mask.shape == (image['height'], image['width']) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    # Rasterized pixels vs the polygon area: boundary pixels make small objects differ.
    assert abs(int(mask.sum()) - ann['area']) <= 0.05 * ann['area'] + 5, ann['id']
    total_pixels += int(mask.sum())
    total_area += ann['area']
  assert abs(total_pixels - total_area) < 0.005 * total_area


def test_crowd_rle_matches_pycocotools(coco_tiny):
  data = json.loads((coco_tiny / 'annotations' / 'instances_val2017.json').read_text())
  images = {image['id']: image for image in data['images']}
  crowds = [ann for ann in data['annotations'] if ann['iscrowd']]
  assert crowds
  for ann in crowds:
    image = images[ann['image_id']]
    height, width = image['height'], image['width']
    mask = mask_decoding.segmentation_to_mask(ann['segmentation'], height, width)
    # COCO's crowd `area` fields are not the RLE pixel count; pycocotools' area is.
    compressed = mask_util.frPyObjects(ann['segmentation'], height, width)
    assert int(mask.sum()) == int(mask_util.area(compressed))
    as_str = {'counts': compressed['counts'].decode('ascii'), 'size': [height, width]}
    np.testing.assert_array_equal(mask_decoding.segmentation_to_mask(as_str, height, width), mask)


def test_compressed_and_uncompressed_rle_identical():
  rng = np.random.default_rng(0)
  for height, width in ((1, 1), (7, 13), (40, 31)):
    mask = random_blob_mask(rng, height, width)
    mask[0, 0] = 1  # counts start with a zero-length run
    uncompressed = uncompressed_rle(mask)
    compressed = mask_util.encode(np.asfortranarray(mask))
    as_str = {'counts': compressed['counts'].decode('ascii'), 'size': [height, width]}
    for segmentation in (uncompressed, compressed, as_str):
      decoded = mask_decoding.segmentation_to_mask(segmentation, height, width)
      assert decoded.dtype == np.uint8
      np.testing.assert_array_equal(decoded, mask)


def test_polygons_are_merged():
  rect_a = [2, 3, 10, 3, 10, 8, 2, 8]  # pixels x 2..9, y 3..7
  rect_b = [6.0, 5.0, 13.0, 5.0, 13.0, 11.0, 6.0, 11.0]  # x 6..12, y 5..10
  expected = np.zeros((12, 14), np.uint8)
  expected[3:8, 2:10] = 1
  expected[5:11, 6:13] = 1
  np.testing.assert_array_equal(
      mask_decoding.segmentation_to_mask([rect_a, rect_b], 12, 14), expected)


@pytest.mark.parametrize('segmentation, match', [
    ([[1, 2, 3, 4]], 'at least 3 points'),  # pycocotools would read 4 numbers as a bbox
    ([[1, 2, 3, 4, 5, 6, 7]], 'at least 3 points'),
    ([[[1, 2], [3, 4], [5, 6]]], 'flat list'),
    ([[0, 0, 5, 0, float('nan'), 5]], 'finite'),
    ([], 'no polygons'),
    ({'counts': [12], 'size': [3, 5]}, 'does not match'),
    ({'counts': [10, 3], 'size': [3, 4]}, 'sum to 13'),
    ({'counts': [13, -1], 'size': [3, 4]}, 'non-negative'),
    ({'counts': b'0', 'size': [3, 4]}, 'sum to 0'),
    ({'counts': 'a', 'size': [3, 4]}, 'middle of a number'),
    ({'counts': 3.0, 'size': [3, 4]}, 'counts must be'),
    ({'size': [3, 4]}, "keys 'counts' and 'size'"),
    ('polygon', 'list of polygons or an RLE dict'),
    (None, 'list of polygons or an RLE dict'),
])
def test_bad_segmentations_raise(segmentation, match):
  with pytest.raises(ValueError, match=match):
    mask_decoding.segmentation_to_mask(segmentation, 3, 4)


# crop_and_resize_mask


def crop_and_resize_reference(mask, box, size):
  x1, y1, x2, y2 = box
  out = np.zeros((size, size), np.uint8)
  if x2 <= x1 or y2 <= y1:
    return out
  for i in range(size):
    for j in range(size):
      y = y1 + (i + 0.5) * ((y2 - y1) / size) - 0.5
      x = x1 + (j + 0.5) * ((x2 - x1) / size) - 0.5
      out[i, j] = bilinear_zero_padded(mask, y, x) >= 0.5
  return out


@pytest.mark.parametrize('order', ['C', 'F'])
def test_crop_and_resize_matches_reference(order):
  """Row-major masks and pycocotools' column-major ones (the input pipeline's) alike."""
  rng = np.random.default_rng(1)
  mask = np.asarray(random_blob_mask(rng, 30, 40), order=order)
  boxes = [
      (0.0, 0.0, 40.0, 30.0), (3.0, 5.0, 19.0, 21.0), (2.3, 4.7, 31.9, 12.2),
      (-6.5, -3.2, 12.4, 9.9), (30.2, 20.1, 47.0, 36.0), (10.0, 10.0, 10.5, 10.2),
      (50.0, 40.0, 60.0, 50.0),
  ]
  for box in boxes:
    for size in (7, 16):
      out = mask_crops.crop_and_resize_mask(mask, box, size)
      assert out.shape == (size, size) and out.dtype == np.uint8
      np.testing.assert_array_equal(out, crop_and_resize_reference(mask, box, size), str(box))


@pytest.mark.parametrize('box', [(5.0, 5.0, 5.0, 9.0), (5.0, 9.0, 8.0, 2.0),
                                 (0.0, 0.0, float('nan'), 3.0)])
def test_crop_and_resize_degenerate_box_is_zeros(box):
  mask = np.ones((10, 10), np.uint8)
  np.testing.assert_array_equal(mask_crops.crop_and_resize_mask(mask, box, 8), 0)


def iou(a, b):
  return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


@pytest.mark.parametrize('shape', ['rectangle', 'disc'])
def test_crop_then_paste_round_trip(shape):
  height, width = 90, 120
  mask = np.zeros((height, width), np.uint8)
  if shape == 'rectangle':
    mask[17:61, 23:97] = 1
  else:
    yy, xx = np.mgrid[:height, :width] + 0.5
    mask[(yy - 47.3) ** 2 + (xx - 58.1) ** 2 < 31.0 ** 2] = 1
  rows, cols = np.nonzero(mask)
  box = (cols.min(), rows.min(), cols.max() + 1.0, rows.max() + 1.0)
  crop = mask_crops.crop_and_resize_mask(mask, box, 112)
  pasted = paste.paste_mask(crop.astype(np.float32), box, height, width, method='bilinear')
  assert iou(pasted, mask.astype(bool)) > 0.95


# paste_mask


def test_paste_torchvision_matches_recorded_fixture():
  data = np.load(FIXTURES / 'torchvision_paste.npz')
  num_cases = len([key for key in data if key.startswith('box_')])
  assert num_cases >= 10
  for i in range(num_cases):
    height, width = (int(v) for v in data[f'image_size_{i}'])
    out = paste.paste_mask(data[f'mask_probs_{i}'], data[f'box_{i}'], height, width,
                           method='torchvision')
    assert out.shape == (height, width) and out.dtype == bool
    np.testing.assert_array_equal(out, data[f'pasted_{i}'], f'case {i}')


def paste_bilinear_reference(probs, box, height, width):
  """Detectron2's _do_paste_mask over the whole image: pixel centers -> grid_sample."""
  x1, y1, x2, y2 = box
  size = probs.shape[0]
  out = np.zeros((height, width))
  for py in range(height):
    for px in range(width):
      grid_x = (px + 0.5 - x1) / (x2 - x1) * 2 - 1  # [-1, 1] over the box
      grid_y = (py + 0.5 - y1) / (y2 - y1) * 2 - 1
      # grid_sample unnormalization with align_corners=False
      x = ((grid_x + 1) * size - 1) / 2
      y = ((grid_y + 1) * size - 1) / 2
      out[py, px] = bilinear_zero_padded(probs, y, x)
  return out


def test_paste_bilinear_matches_reference():
  rng = np.random.default_rng(2)
  cases = [((3.2, 4.9, 27.7, 21.3), 28), ((-8.0, -5.5, 12.0, 14.5), 14),
           ((20.5, 10.0, 45.0, 40.0), 28), ((0.0, 0.0, 36.0, 28.0), 14),
           ((11.2, 13.4, 11.9, 13.8), 28), ((2.0, 3.0, 150.0, 120.0), 14),
           ((4.2, 3.1, 30.3, 25.6), 5)]  # big cells: pixels outside the box reach 0.1
  for box, size in cases:
    probs = rng.random((size, size), dtype=np.float32)
    reference = paste_bilinear_reference(probs, box, 28, 36)
    for threshold in (0.5, 0.1):
      out = paste.paste_mask(probs, box, 28, 36, threshold=threshold)
      assert out.shape == (28, 36) and out.dtype == bool
      decided = np.abs(reference - threshold) > 1e-9
      np.testing.assert_array_equal(out[decided], reference[decided] >= threshold, str(box))


@pytest.mark.parametrize('method', ['bilinear', 'torchvision'])
@pytest.mark.parametrize('box', [(40.0, 5.0, 60.0, 15.0), (-30.0, -20.0, -10.0, -5.0),
                                 (32.0, 0.0, 38.0, 20.0), (12.0, 8.0, 4.0, 2.0)])
def test_paste_box_outside_image_or_inverted_is_empty(method, box):
  out = paste.paste_mask(np.ones((28, 28), np.float32), box, 20, 30, method=method)
  assert out.shape == (20, 30) and not out.any()


def test_paste_zero_width_box():
  probs = np.ones((28, 28), np.float32)
  assert not paste.paste_mask(probs, (5.0, 5.0, 5.0, 9.0), 20, 30).any()
  # torchvision resizes to at least one pixel: a one-column line.
  out = paste.paste_mask(probs, (5.0, 5.0, 5.0, 9.0), 20, 30, method='torchvision')
  assert set(np.nonzero(out)[1]) == {5} and 4 <= out.sum() <= 6


def test_paste_taps_of_many_boxes_are_those_of_each_box():
  rng = np.random.default_rng(3)
  lo = rng.uniform(-20, 60, 30)
  hi = lo + np.exp(rng.uniform(-2, 4, 30))
  hi[:3] = lo[:3] - 1.0  # degenerate (torchvision still pastes a pixel)
  hi[3], lo[4] = np.inf, np.nan  # non-finite: nothing
  hi[5] = lo[5] + 27  # torchvision: an integer box of M + 2, the identity resize
  for name, lo_, hi_ in (('bilinear_paste_coords', lo, hi),
                         ('torchvision_paste_taps', lo.astype(np.float32),
                          hi.astype(np.float32))):
    paste_taps = getattr(paste, name)
    with np.errstate(invalid='ignore'):
      start, offsets, *taps = paste_taps(lo_, hi_, 28, 50)
    assert offsets[0] == 0 and not np.diff(offsets)[3:5].any()
    for k in range(30):
      with np.errstate(invalid='ignore'):
        (one_start,), one_offsets, *one_taps = paste_taps(lo_[k:k + 1], hi_[k:k + 1],
                                                          28, 50)
      assert one_offsets[1] == offsets[k + 1] - offsets[k]
      if one_offsets[1]:
        assert one_start == start[k]
      for batched, alone in zip(taps, one_taps):
        np.testing.assert_array_equal(batched[offsets[k]:offsets[k + 1]], alone)
        assert batched.dtype == alone.dtype


def test_torch_bilinear_taps_with_one_output_size_per_position():
  positions = np.concatenate([np.arange(n) for n in (5, 30, 31, 90)])
  sizes = np.repeat([5, 30, 31, 90], [5, 30, 31, 90])
  taps = interpolation.torch_bilinear_taps(30, positions, sizes)
  for n in (5, 30, 31, 90):
    for batched, alone in zip(taps, interpolation.torch_bilinear_taps(30, np.arange(n), n)):
      np.testing.assert_array_equal(batched[sizes == n], alone)


def test_paste_bad_inputs_raise():
  with pytest.raises(ValueError, match='method'):
    paste.paste_mask(np.ones((4, 4)), (0, 0, 2, 2), 5, 5, method='nearest')
  with pytest.raises(ValueError, match='expected'):
    paste.paste_mask(np.ones((2, 4, 4)), (0, 0, 2, 2), 5, 5)


# mask_targets


def mask_targets_reference(crops, gt_boxes, rois, matched_gt, output_size):
  """Values before the threshold: [R, O, O] float64."""
  size = crops.shape[-1]
  out = np.zeros((len(rois), output_size, output_size))
  for r, (rx1, ry1, rx2, ry2) in enumerate(rois.astype(np.float64)):
    gx1, gy1, gx2, gy2 = gt_boxes[matched_gt[r]].astype(np.float64)
    if gx2 <= gx1 or gy2 <= gy1:
      continue
    for i in range(output_size):
      for j in range(output_size):
        y = ry1 + (i + 0.5) * (ry2 - ry1) / output_size  # bin center, image frame
        x = rx1 + (j + 0.5) * (rx2 - rx1) / output_size
        v = (y - gy1) / (gy2 - gy1) * size - 0.5  # crop-cell coordinates
        u = (x - gx1) / (gx2 - gx1) * size - 0.5
        out[r, i, j] = bilinear_zero_padded(crops[matched_gt[r]], v, u)
  return out


def make_targets_inputs(rng, num_gt=4, num_rois=10, crop_size=16):
  crops = np.stack([random_blob_mask(rng, crop_size, crop_size) for _ in range(num_gt)])
  xy = rng.uniform(0, 60, (num_gt, 2))
  gt_boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (num_gt, 2))], 1).astype(np.float32)
  gt_boxes[-1] = 0.0  # a padded gt
  matched_gt = rng.integers(0, num_gt, num_rois).astype(np.int32)
  jitter = rng.uniform(-8, 8, (num_rois, 4))
  rois = (gt_boxes[matched_gt] + jitter).astype(np.float32)
  rois[:, 2:] = np.maximum(rois[:, 2:], rois[:, :2] + 1)
  return crops, gt_boxes, rois, matched_gt


def test_mask_targets_matches_reference():
  rng = np.random.default_rng(3)
  crops, gt_boxes, rois, matched_gt = make_targets_inputs(rng)
  out = np.asarray(mask_ops.mask_targets(crops, gt_boxes, rois, matched_gt, output_size=8))
  assert out.shape == (10, 8, 8) and out.dtype == np.float32
  reference = mask_targets_reference(crops, gt_boxes, rois, matched_gt, 8)
  decided = np.abs(reference - 0.5) > 1e-4  # float32 vs float64 right at the threshold
  assert decided.mean() > 0.95
  np.testing.assert_array_equal(out[decided], (reference[decided] >= 0.5).astype(np.float32))
  assert not out[matched_gt == 3].any()  # the padded gt box


def test_mask_targets_roi_equal_to_gt_box_resizes_crop():
  rng = np.random.default_rng(4)
  crops = np.stack([random_blob_mask(rng, 112, 112) for _ in range(3)])
  gt_boxes = np.array([[10.3, 20.7, 90.1, 64.9], [0.0, 0.0, 30.0, 30.0],
                       [5.5, 1.25, 17.75, 100.5]], np.float32)
  out = mask_ops.mask_targets(crops, gt_boxes, gt_boxes, np.arange(3, dtype=np.int32))
  for n in range(3):
    expected = mask_crops.crop_and_resize_mask(crops[n], (0.0, 0.0, 112.0, 112.0), 28)
    np.testing.assert_array_equal(np.asarray(out[n]), expected.astype(np.float32))


def test_mask_targets_roi_outside_gt_box_is_zero():
  crops = np.ones((1, 16, 16), np.uint8)
  gt_boxes = np.array([[10.0, 10.0, 20.0, 20.0]], np.float32)
  rois = np.array([[20.0, 10.0, 30.0, 20.0], [-5.0, -5.0, 9.9, 9.9], [0.0, 21.0, 50.0, 40.0]],
                  np.float32)
  out = mask_ops.mask_targets(crops, gt_boxes, rois, np.zeros(3, np.int32), output_size=8)
  np.testing.assert_array_equal(np.asarray(out), 0.0)


def test_mask_targets_jit_and_vmap():
  rng = np.random.default_rng(5)
  batch = [make_targets_inputs(rng) for _ in range(2)]
  stacked = [np.stack(parts) for parts in zip(*batch)]
  targets = functools.partial(mask_ops.mask_targets, output_size=8)
  out = jax.jit(jax.vmap(targets))(*stacked)
  assert out.shape == (2, 10, 8, 8)
  for b, inputs in enumerate(batch):
    np.testing.assert_array_equal(np.asarray(out[b]), np.asarray(targets(*inputs)))
