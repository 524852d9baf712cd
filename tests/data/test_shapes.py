"""Tests of data/shapes.py: determinism, COCO validity, all mask formats, speed."""

import json
import time

import numpy as np
from PIL import Image

from maskrcnn_jax.data import coco
from maskrcnn_jax.data import image_files
from maskrcnn_jax.data import mask_decoding
from maskrcnn_jax.data import shapes


def test_deterministic_in_the_seed(tmp_path):
  first = shapes.write_split(str(tmp_path / 'a'), 'train', 6, 48, seed=3)
  second = shapes.write_split(str(tmp_path / 'b'), 'train', 6, 48, seed=3)
  other = shapes.write_split(str(tmp_path / 'c'), 'train', 6, 48, seed=4)
  assert open(first[0]).read() == open(second[0]).read() != open(other[0]).read()
  for name in ('000001.png', '000006.png'):
    a = np.asarray(Image.open(f'{first[1]}/{name}'))
    assert np.array_equal(a, np.asarray(Image.open(f'{second[1]}/{name}')))


def test_reads_as_coco_with_every_mask_format(tmp_path):
  start = time.perf_counter()
  splits = shapes.write_shapes(str(tmp_path), num_train=24, num_val=8, image_size=64)
  assert time.perf_counter() - start < 10
  data = json.load(open(splits['train'][0]))
  segmentations = [a['segmentation'] for a in data['annotations']]
  assert any(isinstance(s, list) for s in segmentations)  # unoccluded: polygons
  assert any(isinstance(s, dict) and isinstance(s['counts'], str) for s in segmentations)
  assert any(isinstance(s, dict) and isinstance(s['counts'], list) for s in segmentations)
  areas = {a['id']: a['area'] for a in data['annotations']}

  dataset = coco.load_coco(*splits['train'], filter_empty=False)
  assert len(dataset) == 24 and dataset.class_names == ('circle', 'square', 'triangle', 'star')
  assert not any(v for k, v in dataset.skipped.items())
  assert sum(not (~r.is_crowd).any() for r in dataset.records) == 3  # every 8th image
  assert sum(int(r.is_crowd.sum()) for r in dataset.records) == 4  # every 6th image
  sizes = []
  for record in dataset.records:
    assert image_files.read_image(record).shape == (64, 64, 3)
    masks = mask_decoding.decode_masks(record)
    union = np.zeros((64, 64), int)
    for mask, box, ann_id in zip(masks, record.boxes, record.annotation_ids):
      assert mask.sum() == areas[ann_id]
      ys, xs = np.nonzero(mask)
      np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
      union += mask
      sizes.append(box[2] - box[0])
    assert union.max() <= 1  # visible parts do not overlap
  assert min(sizes) <= 8 and max(sizes) >= 20  # tiny and large objects
  assert len(coco.load_coco(*splits['val'], filter_empty=True)) == 7
