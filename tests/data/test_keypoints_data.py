"""Keypoints through the data side: shapes' extreme points, COCO loading, batches, COCOeval.

References: the shapes' own polygons (the keypoints are their extreme vertices), the
definition of the flip (x' = width - x with left/right swapped) and of the resize, and
pycocotools' COCOeval(iouType='keypoints') on the ground truth itself (AP 1).
"""

import json

import numpy as np
import pytest

from maskrcnn_jax.data import coco
from maskrcnn_jax.data import examples
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import shapes
from maskrcnn_jax.data import structures
from maskrcnn_jax.evaluation import evaluator as evaluator_lib
from maskrcnn_jax.evaluation import keypoints as keypoint_eval
from tests.conftest import load_config


@pytest.fixture(scope='module')
def split(tmp_path_factory):
  root = tmp_path_factory.mktemp('shapes_keypoints')
  return shapes.write_split(str(root), 'train', 12, 64, seed=3, keypoints=True)


def test_keypoints_are_the_polygons_extreme_vertices(split):
  with open(split[0]) as f:
    data = json.load(f)
  assert all(c['keypoints'] == list(shapes.KEYPOINT_NAMES) for c in data['categories'])
  checked = 0
  for ann in data['annotations']:
    points = np.array(ann['keypoints'], np.float64).reshape(4, 3)
    assert ann['num_keypoints'] == int(np.sum(points[:, 2] == 2))
    if ann['iscrowd'] or not isinstance(ann['segmentation'], list):
      continue
    xy = np.array(ann['segmentation'][0]).reshape(-1, 2)
    labelled = points[:, 2] == 2
    expected = xy[[xy[:, 1].argmin(), xy[:, 0].argmax(), xy[:, 1].argmax(), xy[:, 0].argmin()]]
    np.testing.assert_allclose(points[labelled, :2] + 0.5, expected[labelled], atol=0.006)
    checked += int(labelled.sum())
  assert checked > 20


def test_without_keypoints_the_files_are_unchanged(split, tmp_path):
  plain_file, _ = shapes.write_split(str(tmp_path), 'train', 12, 64, seed=3)
  with open(plain_file) as f:
    plain = json.load(f)
  with open(split[0]) as f:
    with_keypoints = json.load(f)
  for ann in with_keypoints['annotations']:
    del ann['keypoints'], ann['num_keypoints']
  for category in with_keypoints['categories']:
    del category['keypoints'], category['skeleton']
  assert plain == with_keypoints


def test_load_coco_reads_keypoints_and_refuses_bad_ones(split, tmp_path):
  dataset = coco.load_coco(*split, filter_empty=False)
  assert dataset.keypoint_names == shapes.KEYPOINT_NAMES
  with open(split[0]) as f:
    data = json.load(f)
  by_id = {a['id']: a for a in data['annotations']}
  for record in dataset.records:
    assert record.keypoints.shape == (record.num_instances, 4, 3)
    for ann_id, keypoints in zip(record.annotation_ids, record.keypoints):
      np.testing.assert_array_equal(keypoints.reshape(-1),
                                    np.float32(by_id[int(ann_id)]['keypoints']))
  data['annotations'][0]['keypoints'] = [1, 2, 2]
  bad = tmp_path / 'bad.json'
  bad.write_text(json.dumps(data))
  with pytest.raises(structures.CocoFormatError,
                     match=rf"annotation id {data['annotations'][0]['id']}: keypoints must be 12"):
    coco.load_coco(str(bad), split[1], filter_empty=False)


def test_batches_resize_flip_and_swap_keypoints(split):
  config = load_config('tiny')
  config.data.num_keypoints = 4
  config.data.min_size = config.data.max_size = 32  # the 64 x 64 images at half size
  dataset = coco.load_coco(*split, filter_empty=True)
  record = next(r for r in dataset.records
                if np.sum(r.keypoints[..., 2] > 0) >= 4 and r.num_instances <= 8)
  batch = examples.empty_batch(2, config.data)
  examples.fill_example(batch, 0, record, config.data)
  examples.fill_example(batch, 1, record, config.data, flip=True)
  n = record.num_instances
  labelled = record.keypoints[..., 2] > 0
  expected = np.where(labelled[..., None], (record.keypoints[..., :2] + 0.5) * 0.5, 0.0)
  np.testing.assert_allclose(batch['gt_keypoints'][0, :n, :, :2], expected, rtol=1e-6)
  np.testing.assert_array_equal(batch['gt_keypoints'][0, :n, :, 2], record.keypoints[..., 2])
  assert not batch['gt_keypoints'][0, n:].any()
  swap = [0, 3, 2, 1]  # top, right, bottom, left: right and left trade places
  flipped = batch['gt_keypoints'][1, :n]
  mirrored = np.where(labelled[:, swap, None], [32.0, 0.0] + [-1, 1] * expected[:, swap], 0.0)
  np.testing.assert_allclose(flipped[..., :2], mirrored, rtol=1e-6, atol=1e-5)
  np.testing.assert_array_equal(flipped[..., 2], record.keypoints[:, swap, 2])


def test_keypoint_metrics_of_the_ground_truth_is_one(split):
  ground_truth = evaluator_lib.coco_eval.GroundTruth.from_file(split[0])
  results = [{'image_id': a['image_id'], 'category_id': a['category_id'],
              'keypoints': a['keypoints'], 'score': 1.0}
             for a in ground_truth.dataset['annotations']
             if not a['iscrowd'] and a['num_keypoints'] > 0]
  metrics = keypoint_eval.keypoint_metrics(ground_truth, results, (0.079,) * 4)
  assert metrics['AP'] == pytest.approx(1.0)
  # Every keypoint 3 px off: OKS below 0.5 on small shapes, so AP drops, as OKS says.
  shifted = [dict(r, keypoints=[v + 3 * (i % 3 < 2) for i, v in enumerate(r['keypoints'])])
             for r in results]
  assert keypoint_eval.keypoint_metrics(ground_truth, shifted, (0.079,) * 4)['AP'] < 0.9
  with pytest.raises(ValueError, match='keypoint_oks_sigmas'):
    keypoint_eval.keypoint_metrics(ground_truth, results)


@pytest.mark.parametrize('min_keypoints', [1, 5, 9])
def test_min_keypoints_drops_the_images_with_fewer_labelled_keypoints(split, tmp_path,
                                                                      min_keypoints):
  """Detectron2's MIN_KEYPOINTS_PER_IMAGE: labelled (v > 0) keypoints of all instances."""
  with open(split[0]) as f:
    data = json.load(f)
  # Unlabel every keypoint of the first image's first instance, so some counts are uneven.
  first = next(a for a in data['annotations'] if a['image_id'] == data['images'][0]['id'])
  first['keypoints'] = [0] * len(first['keypoints'])
  first['num_keypoints'] = 0
  path = tmp_path / 'instances.json'
  path.write_text(json.dumps(data))
  labelled = {image['id']: 0 for image in data['images']}
  for ann in data['annotations']:
    labelled[ann['image_id']] += sum(v > 0 for v in ann['keypoints'][2::3])
  expected = [i for i, n in labelled.items() if n >= min_keypoints]
  assert 0 < len(expected) < len(labelled)
  dataset = coco.load_coco(str(path), split[1], filter_empty=False,
                           min_keypoints=min_keypoints)
  assert [r.image_id for r in dataset.records] == expected
  assert dataset.skipped['few_keypoints'] == len(labelled) - len(expected)
  assert coco.load_coco(str(path), split[1], filter_empty=False).skipped['few_keypoints'] == 0


def test_load_split_filters_training_images_by_keypoints_only_with_keypoints(split):
  data = load_config('tiny').data
  data.train_annotations, data.train_images = split
  data.val_annotations, data.val_images = split
  data.min_train_keypoints = 9
  assert pipeline.load_split(data, 'train').skipped['few_keypoints'] == 0  # no keypoints read
  data.num_keypoints = 4
  train = pipeline.load_split(data, 'train')
  reference = coco.load_coco(*split, filter_empty=True, min_keypoints=9)
  assert train.skipped['few_keypoints'] == reference.skipped['few_keypoints'] > 0
  assert [r.image_id for r in train.records] == [r.image_id for r in reference.records]
  assert pipeline.load_split(data, 'val').skipped['few_keypoints'] == 0
