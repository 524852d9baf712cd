"""Tests of data/tfds_coco.py: prepare offline, read back by name, same data as coco.py."""

import os
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from maskrcnn_jax.config import default_config
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import image_files
from maskrcnn_jax.data import mask_decoding
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import shapes
from maskrcnn_jax.data import structures
from maskrcnn_jax.data import tfds_coco
from tests.data import test_box_only


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """(shapes folder, its splits, TFDS data_dir prepared from it)."""
  root = str(tmp_path_factory.mktemp('shapes'))
  splits = shapes.write_shapes(root, num_train=9, num_val=3, image_size=40, seed=2)
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  tfds_coco.prepare(root, data_dir)
  return root, splits, data_dir


def _assert_same_records(ours, reference):
  assert len(ours) == len(reference)
  for r, q in zip(ours, reference):
    assert r.image_id == q.image_id and (r.height, r.width) == (q.height, q.width)
    for field in ('annotation_ids', 'boxes', 'classes', 'is_crowd'):
      np.testing.assert_array_equal(getattr(r, field), getattr(q, field))
    np.testing.assert_array_equal(image_files.read_image(r), image_files.read_image(q))
    np.testing.assert_array_equal(mask_decoding.decode_masks(r), mask_decoding.decode_masks(q))


def test_reads_back_by_name(prepared):
  _, splits, data_dir = prepared
  builder = tfds.builder('coco_instances', data_dir=data_dir)
  assert builder.info.splits['train'].num_examples == 9
  assert builder.info.splits['val'].num_examples == 3
  assert builder.info.metadata['class_names'] == [c['name'] for c in shapes.CATEGORIES]
  example = builder.as_data_source('train')[0]
  reference = coco.load_coco(*splits['train'], filter_empty=False).records[0]
  np.testing.assert_array_equal(example['image'], image_files.read_image(reference))
  np.testing.assert_array_equal(example['objects']['box'], reference.boxes)


@pytest.mark.parametrize('split, filter_empty', [('train', True), ('train', False),
                                                 ('val', False)])
def test_same_records_as_the_coco_files(prepared, split, filter_empty):
  _, splits, data_dir = prepared
  dataset = tfds_coco.load_tfds(data_dir, split, filter_empty=filter_empty)
  reference = coco.load_coco(*splits[split], filter_empty=filter_empty)
  assert dataset.category_ids == reference.category_ids
  assert dataset.class_names == reference.class_names
  assert dataset.skipped == reference.skipped
  np.testing.assert_array_equal(dataset.instance_counts, reference.instance_counts)
  _assert_same_records(dataset.records, reference.records)


@pytest.mark.slow
def test_same_batches_as_the_coco_files(prepared):
  _, splits, data_dir = prepared
  cfg = default_config().data
  cfg.unlock()
  cfg.update({'min_size': 48, 'max_size': 64, 'image_size': (64, 64), 'max_instances': 5,
              'mask_size': 8, 'extra_canvases': ()})
  streams = []
  for dataset in (tfds_coco.load_tfds(data_dir, 'train', filter_empty=True),
                  coco.load_coco(*splits['train'], filter_empty=True)):
    with pipeline.Batches(dataset, cfg, 4, train=True, seed=1) as batches:
      streams.append([next(batches) for _ in range(3)])
  for a, b in zip(*streams):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_prepares_from_zips(prepared, tmp_path):
  root, splits, _ = prepared
  manual_dir = tmp_path / 'manual'
  manual_dir.mkdir()
  with zipfile.ZipFile(manual_dir / 'annotations.zip', 'w') as z:
    z.write(splits['val'][0], 'annotations/instances_val.json')
  with zipfile.ZipFile(manual_dir / 'val.zip', 'w') as z:
    for name in sorted(os.listdir(splits['val'][1])):
      z.write(os.path.join(splits['val'][1], name), f'val/{name}')
  data_dir = str(tmp_path / 'tfds')
  tfds_coco.prepare(str(manual_dir), data_dir)
  _assert_same_records(tfds_coco.load_tfds(data_dir, 'val', filter_empty=False).records,
                       coco.load_coco(*splits['val'], filter_empty=False).records)


def test_bad_input_fails_when_preparing(tmp_path):
  manual_dir = tmp_path / 'manual'
  (manual_dir / 'annotations').mkdir(parents=True)
  (manual_dir / 'val').mkdir()
  (manual_dir / 'annotations' / 'instances_val.json').write_text('{"images": [')
  with pytest.raises(structures.CocoFormatError, match='instances_val.json: not valid JSON'):
    tfds_coco.prepare(str(manual_dir), str(tmp_path / 'tfds'))


def test_corrupt_zip_is_named(tmp_path):
  manual_dir = tmp_path / 'manual'
  manual_dir.mkdir()
  (manual_dir / 'val2017.zip').write_bytes(b'PK not really a zip')
  with pytest.raises(ValueError, match='val2017.zip: not a readable zip'):
    tfds_coco.prepare(str(manual_dir), str(tmp_path / 'tfds'))


def test_real_coco_slice(coco_tiny, tmp_path):
  manual_dir = tmp_path / 'manual'
  (manual_dir / 'annotations').mkdir(parents=True)
  annotation_file = coco_tiny / 'annotations' / 'instances_val2017.json'
  (manual_dir / 'annotations' / 'instances_val2017.json').symlink_to(annotation_file)
  (manual_dir / 'val2017').symlink_to(coco_tiny / 'val2017')
  data_dir = str(tmp_path / 'tfds')
  tfds_coco.prepare(str(manual_dir), data_dir)
  dataset = tfds_coco.load_tfds(data_dir, 'val2017', filter_empty=False)
  reference = coco.load_coco(str(annotation_file), str(coco_tiny / 'val2017'),
                             filter_empty=False)
  assert len(dataset) == 50 and dataset.category_ids == reference.category_ids
  assert int(dataset.instance_counts.sum()) == 382
  _assert_same_records(dataset.records[::7], reference.records[::7])
  np.testing.assert_array_equal(dataset.records[-1].boxes, reference.records[-1].boxes)
  assert len(tfds_coco.load_tfds(data_dir, 'val2017', filter_empty=True)) == 48


def test_load_split_reads_tfds_from_the_config(prepared):
  _, splits, data_dir = prepared
  cfg = default_config().data
  cfg.unlock()
  cfg.update({'dataset': 'tfds', 'tfds_data_dir': data_dir, 'tfds_train_split': 'train',
              'tfds_val_split': 'val'})
  assert len(pipeline.load_split(cfg, 'train')) == len(
      coco.load_coco(*splits['train'], filter_empty=True))
  assert len(pipeline.load_split(cfg, 'val')) == 3


@pytest.fixture(scope='module')
def prepared_keypoints(tmp_path_factory):
  """(splits, TFDS data_dir) of a shapes folder with keypoints."""
  root = str(tmp_path_factory.mktemp('shapes_keypoints'))
  splits = shapes.write_shapes(root, num_train=8, num_val=2, image_size=40, seed=4,
                               keypoints=True)
  data_dir = str(tmp_path_factory.mktemp('tfds_keypoints'))
  tfds_coco.prepare(root, data_dir)
  return splits, data_dir


@pytest.mark.parametrize('filter_empty, min_keypoints', [(False, 0), (True, 1), (False, 6)])
def test_keypoints_and_their_filter_as_the_coco_files(prepared_keypoints, filter_empty,
                                                      min_keypoints):
  splits, data_dir = prepared_keypoints
  dataset = tfds_coco.load_tfds(data_dir, 'train', filter_empty=filter_empty,
                                min_keypoints=min_keypoints)
  reference = coco.load_coco(*splits['train'], filter_empty=filter_empty,
                             min_keypoints=min_keypoints)
  assert dataset.keypoint_names == reference.keypoint_names == shapes.KEYPOINT_NAMES
  assert dataset.skipped == reference.skipped
  _assert_same_records(dataset.records, reference.records)
  for r, q in zip(dataset.records, reference.records):
    assert r.keypoint_names == q.keypoint_names
    np.testing.assert_array_equal(r.keypoints, q.keypoints)
  if min_keypoints == 6:
    assert 0 < reference.skipped['few_keypoints'] < len(reference.records) + 8


def test_without_keypoints_records_have_none(prepared):
  _, _, data_dir = prepared
  dataset = tfds_coco.load_tfds(data_dir, 'train', filter_empty=False)
  assert dataset.keypoint_names == ()
  assert all(r.keypoints is None for r in dataset.records)


def test_box_only_objects_read_back_without_segmentation(tmp_path):
  path, image_dir = shapes.write_split(str(tmp_path / 'shapes'), 'val', 4, 40, seed=3)
  stripped = test_box_only.strip_segmentations(path, path, every=2)
  data_dir = str(tmp_path / 'tfds')
  tfds_coco.prepare(str(tmp_path / 'shapes'), data_dir)
  dataset = tfds_coco.load_tfds(data_dir, 'val', filter_empty=False)
  reference = coco.load_coco(path, image_dir, filter_empty=False)
  assert dataset.num_without_segmentation == reference.num_without_segmentation == len(
      stripped)
  assert dataset.without_segmentation_ids == reference.without_segmentation_ids
  for r, q in zip(dataset.records, reference.records):
    assert [s is None for s in r.segmentations] == [s is None for s in q.segmentations]
  _assert_same_records(dataset.records, reference.records)  # zero masks for box-only
