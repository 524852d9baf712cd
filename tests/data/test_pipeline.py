"""Tests of data/pipeline.py: batch table, example contents, order, resumption, sharding."""

import dataclasses
import logging
import subprocess
import sys

import numpy as np
import pytest

from maskrcnn_jax.config import default_config
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import shapes
from maskrcnn_jax.data import transforms
from maskrcnn_jax.ops import masks as mask_ops
from tests.conftest import REPO_ROOT


def _data_config(**overrides):
  c = default_config().data
  c.unlock()
  settings = dict(resize_mode='shorter_side', min_size=80, max_size=96, image_size=(128, 128),
                  max_instances=4, mask_size=16, num_workers=2, prefetch=2)
  c.update({**settings, **overrides})
  return c


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  annotations, images = shapes.write_split(str(tmp_path_factory.mktemp('shapes')), 'train',
                                           num_images=10, image_size=48, seed=1, max_shapes=6)
  return coco.load_coco(annotations, images, filter_empty=False)


def _take(batches, count):
  with batches:
    return [next(batches) for _ in range(count)]


def test_batch_table(dataset):
  batch = _take(pipeline.Batches(dataset, _data_config(), 4, train=True), 1)[0]
  expected = {'images': ((4, 128, 128, 3), np.float32), 'image_info': ((4, 4), np.float32),
              'gt_boxes': ((4, 4, 4), np.float32), 'gt_classes': ((4, 4), np.int32),
              'gt_masks': ((4, 4, 16, 16), np.uint8), 'gt_is_crowd': ((4, 4), np.bool_),
              'image_id': ((4,), np.int64)}
  assert {k: (v.shape, v.dtype.type) for k, v in batch.items()} == expected


def test_example_contents_and_flip(dataset):
  cfg = _data_config()
  record = max(dataset.records, key=lambda r: r.num_instances)
  assert record.num_instances > cfg.max_instances  # exercises truncation
  plain, flipped = pipeline.empty_batch(1, cfg), pipeline.empty_batch(1, cfg)
  pipeline.fill_example(plain, 0, record, cfg, flip=False)
  pipeline.fill_example(flipped, 0, record, cfg, flip=True)
  n, scale = cfg.max_instances, 80 / 48

  np.testing.assert_allclose(plain['image_info'][0], [80, 80, scale, 0], rtol=1e-6)
  np.testing.assert_allclose(flipped['image_info'][0], [80, 80, scale, 1], rtol=1e-6)
  image = coco.read_image(record).astype(np.float32)
  expected = (transforms.resize_image(image, 80, 80) - np.array(cfg.mean_rgb)) / np.array(
      cfg.std_rgb)
  np.testing.assert_allclose(plain['images'][0, :80, :80], expected, atol=1e-5)
  assert not plain['images'][0, 80:].any() and not plain['images'][0, :, 80:].any()
  np.testing.assert_allclose(flipped['images'][0, :80, :80], expected[:, ::-1], atol=1e-5)

  np.testing.assert_allclose(plain['gt_boxes'][0], record.boxes[:n] * scale, rtol=1e-6)
  x1, y1, x2, y2 = (record.boxes[:n] * scale).T
  np.testing.assert_allclose(flipped['gt_boxes'][0], np.stack([80 - x2, y1, 80 - x1, y2], -1),
                             rtol=1e-6)
  for batch in (plain, flipped):
    np.testing.assert_array_equal(batch['gt_classes'][0], record.classes[:n])
    np.testing.assert_array_equal(batch['gt_is_crowd'][0], record.is_crowd[:n])
    assert batch['image_id'][0] == record.image_id

  masks = coco.decode_masks(record)
  for i in range(n):
    box = record.boxes[i]
    np.testing.assert_array_equal(plain['gt_masks'][0, i],
                                  mask_ops.crop_and_resize_mask(masks[i], box, 16))
    # The flipped crop is the crop of the mirrored mask over the mirrored box.
    mirrored_box = [48 - box[2], box[1], 48 - box[0], box[3]]
    np.testing.assert_array_equal(
        flipped['gt_masks'][0, i],
        mask_ops.crop_and_resize_mask(masks[i][:, ::-1], mirrored_box, 16))
    assert plain['gt_masks'][0, i].any()


def test_padding_instances_are_zero(dataset):
  cfg = _data_config(max_instances=12)
  record = min((r for r in dataset.records if r.num_instances), key=lambda r: r.num_instances)
  batch = pipeline.empty_batch(1, cfg)
  pipeline.fill_example(batch, 0, record, cfg, flip=False)
  n = record.num_instances
  for key in ('gt_boxes', 'gt_classes', 'gt_masks', 'gt_is_crowd'):
    assert not batch[key][0, n:].any(), key
  assert (batch['gt_classes'][0, :n] > 0).all()


def test_deterministic_resumable_and_independent_of_workers(dataset):
  cfg = _data_config()
  stream = _take(pipeline.Batches(dataset, cfg, 4, train=True, seed=5), 6)
  again = _take(pipeline.Batches(dataset, _data_config(num_workers=1, prefetch=0), 4,
                                 train=True, seed=5), 6)
  resumed = _take(pipeline.Batches(dataset, cfg, 4, train=True, seed=5, start_step=4), 2)
  other = _take(pipeline.Batches(dataset, cfg, 4, train=True, seed=6), 1)
  for a, b in zip(stream, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  for a, b in zip(stream[4:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(stream[0]['image_id'], other[0]['image_id'])
  # Each epoch of 10 images (2.5 steps of 4) visits every image once; flips vary.
  ids = np.concatenate([b['image_id'] for b in stream])
  for epoch in range(2):
    assert sorted(ids[epoch * 10:(epoch + 1) * 10]) == sorted(r.image_id for r in dataset.records)
  flips = np.concatenate([b['image_info'][:, 3] for b in stream])
  assert 0 < flips.mean() < 1


def test_hosts_read_disjoint_shards_of_the_global_batch(dataset):
  cfg = _data_config()
  whole = _take(pipeline.Batches(dataset, cfg, 4, train=True, seed=2), 3)
  hosts = [_take(pipeline.Batches(dataset, cfg, 4, train=True, seed=2, process_index=p,
                                  process_count=2), 3) for p in range(2)]
  for step in range(3):
    assert hosts[0][step]['images'].shape[0] == 2
    for key in whole[step]:
      np.testing.assert_array_equal(
          np.concatenate([hosts[0][step][key], hosts[1][step][key]]), whole[step][key])
  with pytest.raises(ValueError, match='not divisible'):
    pipeline.Batches(dataset, cfg, 5, train=True, process_count=2)


def test_eval_is_one_padded_pass_in_order(dataset):
  cfg = _data_config(random_flip=True)
  with pipeline.Batches(dataset, cfg, 4, train=False) as batches:
    assert batches.num_steps == 3
    stream = list(batches)
  ids = np.concatenate([b['image_id'] for b in stream])
  np.testing.assert_array_equal(ids[:10], [r.image_id for r in dataset.records])
  np.testing.assert_array_equal(ids[10:], [pipeline.PADDING_IMAGE_ID] * 2)
  assert not any(b['image_info'][:, 3].any() for b in stream)
  assert not stream[-1]['images'][2:].any()


def test_truncation_is_logged(dataset, caplog):
  truncated = sum(r.num_instances > 4 for r in dataset.records)
  with caplog.at_level(logging.INFO):
    pipeline.Batches(dataset, _data_config(), 2, train=True).close()
  assert f'{truncated} of 10 images have more than data.max_instances = 4' in caplog.text


def test_worker_errors_reach_the_consumer(dataset, tmp_path):
  cfg = _data_config()
  broken = tmp_path / 'broken.png'
  broken.write_bytes(b'not an image')
  records = [dataclasses.replace(r, path=str(broken)) for r in dataset.records]
  bad = coco.CocoDataset(records, dataset.instance_counts, dataset.category_ids,
                         dataset.class_names, {}, dataset.annotation_file)
  with pipeline.Batches(bad, cfg, 2, train=False) as batches:
    with pytest.raises(coco.CocoFormatError, match='cannot decode .*broken.png'):
      next(batches)


def test_real_coco_slice(coco_tiny):
  cfg = _data_config(min_size=160, max_size=256, image_size=(256, 256), max_instances=20,
                     mask_size=28)
  cfg.val_annotations = str(coco_tiny / 'annotations' / 'instances_val2017.json')
  cfg.val_images = str(coco_tiny / 'val2017')
  dataset = pipeline.load_split(cfg, 'val')
  with pipeline.Batches(dataset, cfg, 8, train=False) as batches:
    stream = list(batches)
  assert len(stream) == 7
  by_id = {r.image_id: r for r in dataset.records}
  crowd = expected_crowd = 0
  for batch in stream:
    for i, image_id in enumerate(batch['image_id']):
      if image_id == pipeline.PADDING_IMAGE_ID:
        continue
      record = by_id[image_id]
      n = min(record.num_instances, 20)
      height, width = batch['image_info'][i, :2]
      assert (height, width) == transforms.resize_shape(
          record.height, record.width, 'shorter_side', 160, 256)[:2]
      assert (batch['gt_classes'][i] > 0).sum() == n
      boxes = batch['gt_boxes'][i, :n]
      assert (boxes[:, 2] <= width + 1e-3).all() and (boxes[:, 3] <= height + 1e-3).all()
      assert batch['gt_masks'][i, :n].any(axis=(1, 2)).all()
      crowd += batch['gt_is_crowd'][i].sum()
      expected_crowd += record.is_crowd[:n].sum()
  assert crowd == expected_crowd > 0


def test_load_split_filters_empty_images_for_training_only(tmp_path):
  splits = shapes.write_shapes(str(tmp_path), num_train=8, num_val=8, image_size=32)
  cfg = _data_config(dataset='shapes')
  cfg.train_annotations, cfg.train_images = splits['train']
  cfg.val_annotations, cfg.val_images = splits['val']
  assert len(pipeline.load_split(cfg, 'train')) == 7  # image 8 is empty
  assert len(pipeline.load_split(cfg, 'val')) == 8
  cfg.filter_empty_train = False
  assert len(pipeline.load_split(cfg, 'train')) == 8


def test_data_never_imports_jax_or_tensorflow():
  code = ('import sys; from maskrcnn_jax.data import pipeline, shapes, tfds_coco; '
          "print(sorted(m for m in ('jax', 'tensorflow') if m in sys.modules))")
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          check=True, cwd=REPO_ROOT)
  assert result.stdout.strip() == '[]'
