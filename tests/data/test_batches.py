"""data/pipeline.py's Batches: canvases, the batch table, resumption and seeds, host slices,
evaluation order, and the real COCO slice at the 1x config."""

import json
import logging
import time

import numpy as np
from PIL import Image
import pytest

from maskrcnn_jax.config import default_config
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import examples
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import transforms

# Batches over a small COCO-format folder with landscape, portrait, square and wide images.
# Resized (shorter side 64, longer at most 128): 40 x 60 -> 64 x 96 and 60 x 40 -> 96 x 64
# (transposed: 64 x 96) on canvas 2 (64 x 128), as 30 x 70 -> 54 x 128; 48 x 48 -> 64 x 64
# on canvas 1. Canvas 0 (128 x 128) takes the leftovers.
IMAGE_SIZES = [(40, 60), (60, 40), (48, 48), (30, 70)]


def batches_config(**overrides):
  c = default_config().data
  c.unlock()
  settings = dict(resize_mode='shorter_side', min_size=64, max_size=128,
                  train_min_sizes=(48, 64), image_size=(128, 128),
                  extra_canvases=((64, 64), (64, 128)), max_instances=3, mask_size=8,
                  num_workers=0, prefetch=2)
  c.update({**settings, **overrides})
  return c


@pytest.fixture(scope='module')
def varied(tmp_path_factory):
  """A 14-image COCO-format split of IMAGE_SIZES, each with 1-2 box-shaped instances."""
  root = tmp_path_factory.mktemp('varied')
  rng = np.random.default_rng(0)
  images, annotations = [], []
  for image_id in range(1, 15):
    height, width = IMAGE_SIZES[image_id % len(IMAGE_SIZES)]
    name = f'{image_id:03d}.png'
    Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).save(root / name)
    images.append({'id': image_id, 'file_name': name, 'height': height, 'width': width})
    for k in range(1 + image_id % 2):
      x, y = rng.uniform(0, width / 2), rng.uniform(0, height / 2)
      w, h = rng.uniform(4, width / 2), rng.uniform(4, height / 2)
      annotations.append({'id': image_id * 10 + k, 'image_id': image_id, 'category_id': 1 + k,
                          'bbox': [x, y, w, h], 'iscrowd': 0, 'area': w * h,
                          'segmentation': [[x, y, x + w, y, x + w, y + h, x, y + h]]})
  path = root / 'instances.json'
  path.write_text(json.dumps({'images': images, 'annotations': annotations, 'categories': [
      {'id': 1, 'name': 'a'}, {'id': 2, 'name': 'b'}]}))
  return coco.load_coco(str(path), str(root), filter_empty=False)


def take_batches(batches, count=None):
  with batches:
    return list(batches) if count is None else [next(batches) for _ in range(count)]


def assert_same_batches(stream_a, stream_b):
  assert len(stream_a) == len(stream_b)
  for a, b in zip(stream_a, stream_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _check_on_canvas(batch, by_id, cfg, train):
  """One canvas per batch; each example inside it, transposed iff a portrait."""
  sizes = transforms.canvas_sizes(cfg)
  height, width = batch['images'].shape[1:3]
  assert (height, width) in sizes
  for i, image_id in enumerate(batch['image_id']):
    if image_id == examples.PADDING_IMAGE_ID:
      assert not batch['images'][i].any() and not batch['gt_classes'][i].any()
      continue
    record = by_id[int(image_id)]
    own = transforms.choose_canvas(record.height, record.width, cfg, train)
    own_h, own_w = sizes[own.index]
    assert own_h <= height and own_w <= width  # its own canvas or one holding it
    info = batch['image_info'][i]
    assert bool(info[4]) == (record.height > record.width)
    valid_h, valid_w = int(info[0]), int(info[1])
    assert 0 < valid_h <= height and 0 < valid_w <= width
    assert not batch['images'][i, valid_h:].any() and not batch['images'][i, :, valid_w:].any()


def test_batches_train_stream_on_canvases(varied):
  cfg = batches_config()
  by_id = {r.image_id: r for r in varied.records}
  batches = pipeline.Batches(varied, cfg, 4, train=True, seed=5)
  start = time.perf_counter()
  stream = take_batches(batches, 8)
  assert time.perf_counter() - start > 0  # the consumer waited for its batches
  for batch in stream:
    _check_on_canvas(batch, by_id, cfg, train=True)
    assert batch['images'].dtype == np.uint8 and batch['image_info'].shape == (4, 5)
  # 14 images: 4 of 48 x 48 (canvas 1) -> 1 batch; 10 on canvas 2 -> 2 batches and 2
  # left over to canvas 0 -> 1 batch, topped up: 4 steps an epoch, each image in each.
  ids = [np.concatenate([b['image_id'] for b in stream[e * 4:(e + 1) * 4]]) for e in range(2)]
  for epoch_ids in ids:
    assert set(epoch_ids.tolist()) == set(by_id)
  assert sorted(b['images'].shape[1:3] for b in stream[:4]) == [(64, 64), (64, 128),
                                                                 (64, 128), (128, 128)]
  scales = np.concatenate([b['image_info'][:, 2] for b in stream])
  flips = np.concatenate([b['image_info'][:, 3] for b in stream])
  assert 0 < flips.mean() < 1 and len(set(np.round(scales, 4).tolist())) > 4


def test_batch_table(varied):
  batch = take_batches(pipeline.Batches(varied, batches_config(), 4, train=False), 1)[0]
  expected = {'images': ((4, 64, 64, 3), np.uint8), 'image_info': ((4, 5), np.float32),
              'gt_boxes': ((4, 3, 4), np.float32), 'gt_classes': ((4, 3), np.int32),
              'gt_masks': ((4, 3, 8, 8), np.uint8), 'gt_is_crowd': ((4, 3), np.bool_),
              'image_id': ((4,), np.int64)}
  assert {k: (v.shape, v.dtype.type) for k, v in batch.items()} == expected


def test_truncation_is_logged(varied, caplog):
  with caplog.at_level(logging.INFO):
    pipeline.Batches(varied, batches_config(max_instances=1), 2, train=True).close()
  assert '7 of 14 images have more than data.max_instances = 1' in caplog.text


def test_each_slot_is_prepare_example_with_its_position_rng(varied):
  cfg = batches_config()
  by_id = {r.image_id: r for r in varied.records}
  host_1 = take_batches(pipeline.Batches(varied, cfg, 4, train=True, seed=7, process_index=1,
                                  process_count=2), 4)
  for step, batch in enumerate(host_1):
    height, width = batch['images'].shape[1:3]
    index = transforms.canvas_sizes(cfg).index((height, width))
    for j, image_id in enumerate(batch['image_id']):
      record = by_id[int(image_id)]
      canvas = transforms.Canvas(index, height, width, record.height > record.width)
      position = step * 4 + 2 + j  # host 1 holds slots 2 and 3 of each global batch
      expected = examples.prepare_example(record, cfg, canvas,
                                          np.random.default_rng([7, position, 1]))
      for key, value in expected.items():
        np.testing.assert_array_equal(batch[key][j], value, err_msg=key)


def test_batches_resume_and_seed(varied):
  cfg = batches_config()
  stream = take_batches(pipeline.Batches(varied, cfg, 4, train=True, seed=5), 7)
  resumed = take_batches(pipeline.Batches(varied, cfg, 4, train=True, seed=5, start_step=5), 2)
  assert_same_batches(stream[5:], resumed)
  other = take_batches(pipeline.Batches(varied, cfg, 4, train=True, seed=6), 2)
  assert not all(np.array_equal(a['image_id'], b['image_id']) for a, b in zip(stream, other))


def test_hosts_partition_the_global_batch(varied):
  cfg = batches_config()
  for train, count in ((True, 5), (False, None)):  # None: the whole evaluation pass
    whole = take_batches(pipeline.Batches(varied, cfg, 4, train=train, seed=2), count)
    hosts = [take_batches(pipeline.Batches(varied, cfg, 4, train=train, seed=2, process_index=p,
                                    process_count=2), count) for p in range(2)]
    assert len(whole) == len(hosts[0]) == len(hosts[1]) == (count or 4)
    for step in range(len(whole)):
      assert hosts[0][step]['images'].shape[0] == 2
      for key in whole[step]:
        np.testing.assert_array_equal(
            np.concatenate([hosts[0][step][key], hosts[1][step][key]]), whole[step][key])
  with pytest.raises(ValueError, match='not divisible'):
    pipeline.Batches(varied, cfg, 5, train=True, process_count=2)


def test_eval_reads_every_image_once_grouped_by_canvas(varied):
  cfg = batches_config(random_flip=True)
  by_id = {r.image_id: r for r in varied.records}
  with pipeline.Batches(varied, cfg, 4, train=False) as batches:
    # canvas 1: 4 images -> 1 step; canvas 2: 10 -> 3 steps (2 padding examples)
    assert batches.num_steps == 4
    stream = list(batches)
  assert [b['images'].shape[1:3] for b in stream] == [(64, 64)] + [(64, 128)] * 3
  ids = np.concatenate([b['image_id'] for b in stream])
  real = ids[ids != examples.PADDING_IMAGE_ID]
  assert sorted(real.tolist()) == sorted(by_id) and len(real) == len(by_id)
  np.testing.assert_array_equal(ids[-2:], [examples.PADDING_IMAGE_ID] * 2)
  for batch in stream:
    _check_on_canvas(batch, by_id, cfg, train=False)
    assert not batch['image_info'][:, 3].any()  # no flips in evaluation
    for i, image_id in enumerate(batch['image_id']):
      if image_id != examples.PADDING_IMAGE_ID:  # exactly its own canvas, at the test resize
        record = by_id[int(image_id)]
        canvas = transforms.choose_canvas(record.height, record.width, cfg, train=False)
        assert batch['images'].shape[1:3] == (canvas.height, canvas.width)
        new_h, new_w, _ = transforms.resize_shape(record.height, record.width,
                                                  'shorter_side', 64, 128)
        expected = (new_w, new_h) if canvas.transpose else (new_h, new_w)
        assert tuple(batch['image_info'][i, :2]) == expected
  # File order within a canvas.
  grouped = [[int(i) for i in b['image_id'] if i >= 0] for b in stream]
  assert grouped[0] == [r.image_id for r in varied.records if (r.height, r.width) == (48, 48)]
  assert sum(grouped[1:], []) == [r.image_id for r in varied.records
                                  if (r.height, r.width) != (48, 48)]


def test_coco_tiny_eval_at_the_1x_config(coco_tiny):
  cfg = default_config().data
  cfg.val_annotations = str(coco_tiny / 'annotations' / 'instances_val2017.json')
  cfg.val_images = str(coco_tiny / 'val2017')
  cfg.num_workers = 0
  dataset = pipeline.load_split(cfg, 'val')
  by_id = {r.image_id: r for r in dataset.records}
  with pipeline.Batches(dataset, cfg, 8, train=False) as batches:
    stream = list(batches)
  ids = np.concatenate([b['image_id'] for b in stream])
  assert sorted(ids[ids >= 0].tolist()) == sorted(by_id)
  shapes_seen = set()
  for batch in stream:
    _check_on_canvas(batch, by_id, cfg, train=False)
    shapes_seen.add(batch['images'].shape[1:3])
  assert len(shapes_seen) > 1  # real photos use more than one canvas
