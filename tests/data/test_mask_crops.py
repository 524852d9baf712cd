"""data/mask_crops.py: crops against a bilinear reference written from the definition, and
crops straight from RLEs equal to the crops of the decoded masks, bit for bit."""

import json

import numpy as np
from pycocotools import mask as mask_util
import pytest

from maskrcnn_jax.data import mask_crops
from maskrcnn_jax.data import mask_decoding
from tests import numpy_reference


def crop_and_resize_reference(mask, box, size):
  x1, y1, x2, y2 = box
  out = np.zeros((size, size), np.uint8)
  if x2 <= x1 or y2 <= y1:
    return out
  for i in range(size):
    for j in range(size):
      y = y1 + (i + 0.5) * ((y2 - y1) / size) - 0.5
      x = x1 + (j + 0.5) * ((x2 - x1) / size) - 0.5
      out[i, j] = numpy_reference.bilinear_zero_padded(mask, y, x) >= 0.5
  return out


@pytest.mark.parametrize('order', ['C', 'F'])
def test_crop_and_resize_matches_reference(order):
  """Row-major masks and pycocotools' column-major ones (the input pipeline's) alike."""
  rng = np.random.default_rng(1)
  mask = np.asarray(numpy_reference.random_blob_mask(rng, 30, 40), order=order)
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
    mask_list = [numpy_reference.random_blob_mask(rng, height, width) for _ in range(5)]
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
