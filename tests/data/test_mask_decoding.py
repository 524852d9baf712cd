"""data/mask_decoding.py: polygons and RLEs against pycocotools (COCO's own areas on the real
slice), malformed segmentations refused, RLE strings decompressed."""

import json

import numpy as np
from pycocotools import mask as mask_util
import pytest

from maskrcnn_jax.data import mask_decoding
from tests import numpy_reference


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
    mask = numpy_reference.random_blob_mask(rng, height, width)
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


def test_decompress_counts_gives_back_the_runs():
  """Runs -> pycocotools' compressed string -> `decompress_counts`: the same runs, for
  several strings at once (one of them empty)."""
  rng = np.random.default_rng(3)
  runs_list = []
  for _ in range(6):
    runs = rng.integers(1, 4000, rng.integers(1, 40)).tolist()
    runs[0] = int(rng.integers(0, 3))  # a mask may start with a 1
    runs_list.append(runs)
  strings = [mask_util.frPyObjects({'counts': runs, 'size': [1, sum(runs)]}, 1,
                                   sum(runs))['counts'] for runs in runs_list]
  strings.insert(2, b'')
  runs, offsets = mask_decoding.decompress_counts(strings)
  got = [runs[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
  assert got == runs_list[:2] + [[]] + runs_list[2:]
  with pytest.raises(ValueError, match='middle of a number'):
    mask_decoding.decompress_counts([strings[0], b'1P'])
