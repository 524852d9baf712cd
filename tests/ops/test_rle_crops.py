"""Tests for maskrcnn_jax.ops.rle_crops: crops from RLEs equal the crops of decoded masks.

The reference is `mask_crops.crop_and_resize_mask` of pycocotools' full decode (itself tested
against a per-pixel NumPy definition in test_masks.py); equality is exact.
"""

import json

import numpy as np
from pycocotools import mask as mask_util
import pytest

from maskrcnn_jax.data import mask_crops
from maskrcnn_jax.data import mask_decoding
from tests.ops.test_masks import random_blob_mask


def _reference(rles, boxes, size):
  return np.stack([mask_crops.crop_and_resize_mask(mask_util.decode(rle), box, size)
                   for rle, box in zip(rles, boxes)])


def _boxes_to_try(boxes, height, width, rng):
  """The instances' own boxes, moved, scaled, reaching out of the image, and some
  degenerate."""
  boxes = np.asarray(boxes, np.float64)
  n = len(boxes)
  inverted = np.where(rng.random((n, 1)) < 0.4, boxes[:, [2, 3, 0, 1]], boxes)
  return [boxes, boxes + rng.normal(0, 15, (n, 4)), boxes * rng.uniform(0.5, 1.5, (n, 4)),
          np.tile([-30.5, -20.25, width + 10.0, height + 40.0], (n, 1)), inverted]


@pytest.mark.parametrize('size', [1, 7, 28, 112])
def test_random_masks_same_as_decoding_them(size):
  rng = np.random.default_rng(size)
  for height, width in [(30, 40), (57, 23), (1, 9)]:
    mask_list = [random_blob_mask(rng, height, width) for _ in range(5)]
    mask_list += [np.zeros((height, width), np.uint8), np.ones((height, width), np.uint8)]
    rles = [mask_util.encode(np.asfortranarray(m)) for m in mask_list]
    boxes = np.stack([rng.uniform(-5, 5, 7), rng.uniform(-5, 5, 7),
                      rng.uniform(width / 2, width + 5, 7),
                      rng.uniform(height / 2, height + 5, 7)], axis=1)
    for tried in _boxes_to_try(boxes, height, width, rng):
      crops = mask_crops.crop_and_resize_rles(rles, tried, size)
      assert crops.shape == (7, size, size) and crops.dtype == np.uint8
      np.testing.assert_array_equal(crops, _reference(rles, tried, size))


def test_coco_slice_same_as_decoding(coco_tiny):
  """Every instance of the real slice (polygons and crowd RLEs), at the 1x config's 112."""
  data = json.loads((coco_tiny / 'annotations' / 'instances_val2017.json').read_text())
  sizes = {image['id']: (image['height'], image['width']) for image in data['images']}
  by_image = {}
  for ann in data['annotations']:
    by_image.setdefault(ann['image_id'], []).append(ann)
  rng = np.random.default_rng(0)
  checked = 0
  for image_id, anns in sorted(by_image.items())[:25]:
    height, width = sizes[image_id]
    rles = [mask_decoding.segmentation_to_rle(a['segmentation'], height, width) for a in anns]
    boxes = [[x, y, x + w, y + h] for x, y, w, h in (a['bbox'] for a in anns)]
    for tried in _boxes_to_try(boxes, height, width, rng)[:3]:
      np.testing.assert_array_equal(mask_crops.crop_and_resize_rles(rles, tried, 112),
                                    _reference(rles, tried, 112), str(image_id))
      checked += len(anns)
  assert checked > 300


def test_no_instances_and_mixed_sizes():
  assert mask_crops.crop_and_resize_rles([], np.zeros((0, 4)), 8).shape == (0, 8, 8)
  a = mask_util.encode(np.asfortranarray(np.ones((4, 5), np.uint8)))
  b = mask_util.encode(np.asfortranarray(np.ones((5, 4), np.uint8)))
  with pytest.raises(ValueError, match='share its size'):
    mask_crops.crop_and_resize_rles([a, b], np.ones((2, 4)), 8)


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
