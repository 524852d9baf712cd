"""evaluation/metrics.py: COCO metrics against pycocotools (ground truth as predictions, known
detections, none), the files an evaluation writes, and scripts/evaluate.py --results."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
import pytest

from maskrcnn_jax.data import coco
from maskrcnn_jax.data import mask_decoding
from maskrcnn_jax.data import shapes
from maskrcnn_jax.evaluation import metrics as metrics_lib
from tests.conftest import REPO_ROOT


def _encode_mask(mask: np.ndarray) -> dict:
  """[H, W] bool -> COCO compressed RLE with str counts, as a results file holds it."""
  rle = mask_util.encode(np.asfortranarray(np.asarray(mask, np.uint8)[:, :, None]))[0]
  return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}


def _shapes_split(root, num_images=12, size=64, seed=0):
  annotations, images = shapes.write_split(str(root), 'val', num_images, size, seed=seed)
  return coco.load_coco(annotations, images, filter_empty=False)


def _gt_as_results(dataset):
  """Every non-crowd instance of the records as a score-1 detection (boxes, RLE masks)."""
  bbox_results, segm_results = [], []
  for record in dataset.records:
    masks = mask_decoding.decode_masks(record)
    for i in np.flatnonzero(~record.is_crowd):
      common = {'image_id': record.image_id, 'score': 1.0,
                'category_id': dataset.category_ids[record.classes[i] - 1]}
      x1, y1, x2, y2 = record.boxes[i].tolist()
      bbox_results.append(dict(common, bbox=[x1, y1, x2 - x1, y2 - y1]))
      segm_results.append(dict(common, segmentation=_encode_mask(masks[i] > 0)))
  return bbox_results, segm_results


def _names(dataset):
  return dict(zip(dataset.category_ids, dataset.class_names))


def _assert_perfect(metrics):
  for iou_type in metrics_lib.IOU_TYPES:
    assert metrics[iou_type]['AP'] == pytest.approx(1.0), iou_type
    assert metrics[iou_type]['AP75'] == pytest.approx(1.0), iou_type
    for name, ap in metrics[iou_type]['per_category'].items():
      assert ap == -1.0 or ap == pytest.approx(1.0), (iou_type, name, ap)


def test_ground_truth_as_predictions_scores_one_on_shapes(tmp_path):
  dataset = _shapes_split(tmp_path)
  assert any(r.is_crowd.any() for r in dataset.records)  # crowd regions are present
  bbox_results, segm_results = _gt_as_results(dataset)
  from_file = metrics_lib.ground_truth(dataset)
  _assert_perfect(metrics_lib.coco_metrics(from_file, bbox_results, segm_results,
                                           _names(dataset)))
  # The TFDS path: the same split rebuilt from its records.
  no_file = dataclasses.replace(dataset, annotation_file=str(tmp_path / 'tfds val'))
  from_records = metrics_lib.ground_truth(no_file)
  assert len(from_records.dataset["annotations"]) == len(from_file.dataset["annotations"])
  _assert_perfect(metrics_lib.coco_metrics(from_records, bbox_results, segm_results,
                                           _names(dataset)))


def test_ground_truth_as_predictions_scores_one_on_real_coco(coco_tiny):
  dataset = coco.load_coco(coco_tiny / 'annotations' / 'instances_val2017.json',
                           coco_tiny / 'val2017', filter_empty=False)
  assert sum(int(r.is_crowd.sum()) for r in dataset.records) == 5
  bbox_results, segm_results = _gt_as_results(dataset)
  _assert_perfect(metrics_lib.coco_metrics(metrics_lib.ground_truth(dataset), bbox_results,
                                           segm_results, _names(dataset)))


def _known_detections(dataset):
  """Hits (shifted boxes and masks), misses, a duplicate and a wrong class, scored."""
  rng = np.random.default_rng(0)
  bbox_results, segm_results = [], []
  for record in dataset.records:
    masks = mask_decoding.decode_masks(record)
    for i in np.flatnonzero(~record.is_crowd):
      category = dataset.category_ids[record.classes[i] - 1]
      x1, y1, x2, y2 = record.boxes[i].tolist()
      shift = int(rng.integers(0, 4))
      kinds = [('hit', category, shift)]
      if i % 3 == 0:
        kinds.append(('duplicate', category, shift + 1))
      if i % 4 == 1:
        wrong = dataset.category_ids[record.classes[i] % dataset.num_classes]
        kinds.append(('wrong class', wrong, 0))
      for _, category_id, dx in kinds:
        common = {'image_id': record.image_id, 'category_id': category_id,
                  'score': float(rng.uniform(0.05, 1.0))}
        bbox_results.append(dict(common, bbox=[x1 + dx, y1, x2 - x1, y2 - y1]))
        segm_results.append(dict(common, segmentation=_encode_mask(
            np.roll(masks[i] > 0, dx, axis=1))))
    # A miss: a box and mask in the top-left corner.
    common = {'image_id': record.image_id, 'category_id': dataset.category_ids[0],
              'score': float(rng.uniform(0.05, 1.0))}
    miss = np.zeros((record.height, record.width), bool)
    miss[:6, :6] = True
    bbox_results.append(dict(common, bbox=[0.0, 0.0, 6.0, 6.0]))
    segm_results.append(dict(common, segmentation=_encode_mask(miss)))
  return bbox_results, segm_results


def _pycocotools_stats(coco_gt, results, iou_type, category_ids=None):
  evaluator = COCOeval(coco_gt, coco_gt.loadRes(json.loads(json.dumps(results))), iou_type)
  if category_ids is not None:
    evaluator.params.catIds = category_ids
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  return evaluator.stats


def test_known_detections_give_pycocotools_numbers(tmp_path):
  dataset = _shapes_split(tmp_path)
  bbox_results, segm_results = _known_detections(dataset)
  coco_gt = COCO(dataset.annotation_file)
  metrics = metrics_lib.coco_metrics(metrics_lib.ground_truth(dataset), bbox_results, segm_results,
                                     _names(dataset))
  for iou_type, results in (('bbox', bbox_results), ('segm', segm_results)):
    stats = _pycocotools_stats(coco_gt, results, iou_type)
    np.testing.assert_allclose([metrics[iou_type][n] for n in metrics_lib.STAT_NAMES], stats,
                               rtol=0, atol=1e-12)
    assert 0.1 < metrics[iou_type]['AP'] < 0.9, metrics[iou_type]['AP']
    for category_id, name in _names(dataset).items():
      expected = _pycocotools_stats(coco_gt, results, iou_type, [category_id])[0]
      assert metrics[iou_type]['per_category'][name] == pytest.approx(expected, abs=1e-12)
  # The ground truth rebuilt from the records (TFDS path) gives the same numbers.
  no_file = dataclasses.replace(dataset, annotation_file=str(tmp_path / 'tfds val'))
  assert metrics_lib.coco_metrics(metrics_lib.ground_truth(no_file), bbox_results, segm_results,
                                  _names(dataset)) == metrics


def test_no_detections_give_zeros(tmp_path):
  dataset = _shapes_split(tmp_path, num_images=4)
  metrics = metrics_lib.coco_metrics(metrics_lib.ground_truth(dataset), [], [], _names(dataset))
  for iou_type in metrics_lib.IOU_TYPES:
    assert metrics[iou_type]['AP'] == 0.0 and metrics[iou_type]['AR100'] == 0.0
  flat = metrics_lib.flat_metrics(metrics)
  assert set(flat) == {f'{t}/{n}' for t in metrics_lib.IOU_TYPES for n in metrics_lib.STAT_NAMES}


def test_metrics_of_each_step_are_kept(tmp_path):
  for step, ap in ((100, 0.25), (50, 0.125), (200, 0.5)):
    metrics_lib.write_metrics(str(tmp_path), {'bbox': {'AP': ap}, 'step': step,
                                              'checkpoint': f'ckpt/{step}'})
  assert json.loads((tmp_path / 'metrics.json').read_text())['step'] == 200  # the latest
  by_step = json.loads((tmp_path / 'metrics_by_step.json').read_text())
  assert list(by_step) == ['50', '100', '200']
  assert [m['bbox']['AP'] for m in by_step.values()] == [0.125, 0.25, 0.5]
  assert json.loads((tmp_path / 'metrics_50.json').read_text())['checkpoint'] == 'ckpt/50'


def test_script_evaluates_results_files_without_a_model(tmp_path):
  dataset = _shapes_split(tmp_path)
  bbox_results, segm_results = _known_detections(dataset)
  paths = [tmp_path / 'results_bbox.json', tmp_path / 'results_segm.json']
  for path, results in zip(paths, (bbox_results, segm_results)):
    path.write_text(json.dumps(results))
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  command = [sys.executable, 'scripts/evaluate.py', '--results', str(paths[0]),
             str(paths[1]), f'--annotations={dataset.annotation_file}']
  result = subprocess.run(command + [f'--workdir={tmp_path / "eval"}', '--engine=pycocotools'],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  written = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
  expected = metrics_lib.coco_metrics(metrics_lib.ground_truth(dataset), bbox_results,
                                      segm_results, _names(dataset), 'pycocotools')
  for iou_type in metrics_lib.IOU_TYPES:
    assert written[iou_type] == expected[iou_type]
  assert written['results_files'] == [str(p) for p in paths]
  assert 'Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all' in result.stdout
  (tmp_path / 'bad.json').write_text('[{"image_id": 1}]')
  result = subprocess.run(command[:3] + [str(tmp_path / 'bad.json')] + command[4:],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "bad.json: entry 0 has no 'category_id'" in result.stderr


def test_script_evaluates_polygon_results_printing_each_table_once(tmp_path):
  """A results file whose segmentations are the ground truth's own (polygons and RLE),
  as another tool may write them: each table printed once (not again in
  faster-coco-eval's log lines), with its per-category APs."""
  dataset = _shapes_split(tmp_path)
  with open(dataset.annotation_file) as f:
    annotations = json.load(f)['annotations']
  segm_results = [{'image_id': a['image_id'], 'category_id': a['category_id'], 'score': 1.0,
                   'segmentation': a['segmentation']} for a in annotations if not a['iscrowd']]
  assert {type(r['segmentation']) for r in segm_results} == {list, dict}  # polygons and RLE
  path = tmp_path / 'results_segm.json'
  path.write_text(json.dumps(segm_results))
  result = subprocess.run(
      [sys.executable, 'scripts/evaluate.py', '--results', str(path),
       f'--annotations={dataset.annotation_file}', f'--workdir={tmp_path / "eval"}'],
      cwd=REPO_ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  written = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
  assert written['segm']['AP'] == pytest.approx(1.0)
  printed = result.stdout + result.stderr
  assert printed.count('Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all') == 1, printed
  assert printed.count('per-category segm AP:') == 1
  table = result.stdout[result.stdout.index('per-category segm AP:'):].splitlines()[1:3]
  assert all(f'{name} 100.0' in ' '.join(' '.join(table).split())
             for name in dataset.class_names), table


def test_ground_truth_of_records_with_box_only_instances(tmp_path):
  """A TFDS split's records may hold box-only instances (segmentation None): their
  ground truth has the box's area and no segmentation, and the boxes evaluate."""
  dataset = _shapes_split(tmp_path, num_images=4)
  record = dataset.records[0]
  box_only = dataclasses.replace(record, segmentations=(None,) + record.segmentations[1:])
  no_file = dataclasses.replace(dataset, records=[box_only] + list(dataset.records[1:]),
                                annotation_file=str(tmp_path / 'tfds val'))
  gt = metrics_lib.ground_truth(no_file)
  first = gt.dataset['annotations'][0]
  x1, y1, x2, y2 = record.boxes[0].tolist()
  assert 'segmentation' not in first and first['area'] == (x2 - x1) * (y2 - y1)
  bbox_results, _ = _gt_as_results(dataset)
  metrics = metrics_lib.coco_metrics(gt, bbox_results, None, _names(dataset))
  assert metrics['bbox']['AP'] == pytest.approx(1.0) and 'segm' not in metrics
