"""faster-coco-eval against pycocotools (the reference): identical 12-number tables.

All 12 numbers and every per-category AP equal within 1e-12 (the C++ accumulation sums
in another order, so the last bit or two may differ), for bbox and segm, on the real COCO
slice and on synthetic cases: crowd regions, empty images, images with more than 100
detections, a category with no detections, no results.
`coco_tables` with bbox and segm at once (a spawned process) gives exactly the tables of
one after the other, per-category APs included.
"""

import json

import numpy as np
import pytest

from benchmarks import evaluation as eval_benchmark
from maskrcnn_jax.evaluation import coco_eval


def _assert_same_tables(ground_truth, results_by_type):
  tables = {}
  for iou_type, results in results_by_type.items():
    reference = coco_eval.coco_table(ground_truth, results, iou_type, 'pycocotools')
    fast = coco_eval.coco_table(ground_truth, results, iou_type, 'faster_coco_eval')
    # The C++ accumulation sums in another order: equal up to the last bit or two
    # (0.37773218999274766 vs 0.3777321899927476), so 1e-12, not ==.
    np.testing.assert_allclose([fast[n] for n in coco_eval.STAT_NAMES],
                               [reference[n] for n in coco_eval.STAT_NAMES], rtol=0,
                               atol=1e-12, err_msg=iou_type)
    assert fast['per_category'].keys() == reference['per_category'].keys()
    np.testing.assert_allclose(list(fast['per_category'].values()),
                               list(reference['per_category'].values()), rtol=0, atol=1e-12)
    tables[iou_type] = reference
  return tables


def _gt_as_results(gt):
  """Every non-crowd instance as a score-1 detection (its box; its polygon as RLE)."""
  from pycocotools import mask as mask_util  # pylint: disable=import-outside-toplevel
  images = {image['id']: image for image in gt['images']}
  bbox_results, segm_results = [], []
  for annotation in gt['annotations']:
    if annotation['iscrowd']:
      continue
    image = images[annotation['image_id']]
    common = {'image_id': annotation['image_id'], 'category_id': annotation['category_id'],
              'score': 1.0}
    bbox_results.append(dict(common, bbox=annotation['bbox']))
    segmentation = annotation['segmentation']
    rle = mask_util.merge(mask_util.frPyObjects(segmentation, image['height'],
                                                image['width']))
    segm_results.append(dict(common, segmentation={
        'size': rle['size'], 'counts': rle['counts'].decode('ascii')}))
  return bbox_results, segm_results


@pytest.fixture
def coco_tiny_gt(coco_tiny):
  with open(coco_tiny / 'annotations' / 'instances_val2017.json') as f:
    return json.load(f)


def test_real_coco_ground_truth_as_results(coco_tiny_gt):
  bbox_results, segm_results = _gt_as_results(coco_tiny_gt)
  tables = _assert_same_tables(coco_eval.GroundTruth(coco_tiny_gt),
                               {'bbox': bbox_results, 'segm': segm_results})
  assert tables['bbox']['AP'] == pytest.approx(1.0)
  assert tables['segm']['AP'] == pytest.approx(1.0)


def test_real_coco_jittered_detections(coco_tiny_gt):
  assert sum(a['iscrowd'] for a in coco_tiny_gt['annotations']) == 5  # crowd regions
  bbox_results, segm_results = eval_benchmark.jittered_results(coco_tiny_gt, per_image=30)
  tables = _assert_same_tables(coco_eval.GroundTruth(coco_tiny_gt),
                               {'bbox': bbox_results, 'segm': segm_results})
  for iou_type in ('bbox', 'segm'):
    assert 0.05 < tables[iou_type]['AP'] < 0.95, tables[iou_type]['AP']


def test_synthetic_crowd_empty_images_many_detections_missing_category():
  gt = eval_benchmark.synthetic_ground_truth(25, seed=3, crowd_fraction=0.15)
  # Image 2 made empty: its detections are all false positives.
  gt['annotations'] = [a for a in gt['annotations'] if a['image_id'] != 2]
  bbox_results, segm_results = eval_benchmark.jittered_results(gt, per_image=110, seed=4)
  # One category has ground truth but no detections; one image has instances but none.
  missing_category = gt['annotations'][0]['category_id']
  no_detections = gt['annotations'][-1]['image_id']
  keep = [r['category_id'] != missing_category and r['image_id'] != no_detections
          for r in bbox_results]
  bbox_results = [r for r, k in zip(bbox_results, keep) if k]
  segm_results = [r for r, k in zip(segm_results, keep) if k]
  instances = {a['image_id'] for a in gt['annotations']}
  assert any(image['id'] not in instances for image in gt['images'])  # empty images
  assert sum(a['iscrowd'] for a in gt['annotations']) >= 5
  assert max(np.unique([r['image_id'] for r in bbox_results], return_counts=True)[1]) > 100
  tables = _assert_same_tables(coco_eval.GroundTruth(gt),
                               {'bbox': bbox_results, 'segm': segm_results})
  for iou_type in ('bbox', 'segm'):
    assert tables[iou_type]['per_category'][missing_category] == 0.0
    assert 0.01 < tables[iou_type]['AP'] < 0.9


def test_no_results_give_the_same_zeros():
  gt = eval_benchmark.synthetic_ground_truth(5, seed=5)
  tables = _assert_same_tables(coco_eval.GroundTruth(gt), {'bbox': [], 'segm': []})
  assert tables['bbox']['AP'] == 0.0


def test_unknown_engine_is_refused():
  gt = coco_eval.GroundTruth(eval_benchmark.synthetic_ground_truth(2))
  with pytest.raises(ValueError, match='eval.engine'):
    coco_eval.coco_table(gt, [], 'bbox', 'detectron2')


def test_read_results_checks_files(tmp_path):
  gt = coco_eval.GroundTruth(eval_benchmark.synthetic_ground_truth(3))
  bbox_results, segm_results = eval_benchmark.jittered_results(gt.dataset, per_image=2)
  cases = {'results_bbox.json': bbox_results, 'results_segm.json': segm_results,
           'empty_segm.json': []}
  for name, results in cases.items():
    (tmp_path / name).write_text(json.dumps(results))
  assert coco_eval.read_results(tmp_path / 'results_bbox.json', gt)[0] == 'bbox'
  assert coco_eval.read_results(tmp_path / 'results_segm.json', gt)[0] == 'segm'
  assert coco_eval.read_results(tmp_path / 'empty_segm.json', gt) == ('segm', [])
  bad = {'not_json.json': '{', 'dict.json': '{}', 'empty.json': '[]',
         'no_score.json': json.dumps([{'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 1, 1]}]),
         'image.json': json.dumps([dict(bbox_results[0], image_id=999)])}
  messages = {'not_json.json': 'is not JSON', 'dict.json': 'list of detections',
              'empty.json': "neither 'bbox' nor 'segm'", 'no_score.json': "no 'score'",
              'image.json': 'image_id 999'}
  for name, text in bad.items():
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=messages[name]):
      coco_eval.read_results(tmp_path / name, gt)
  with pytest.raises(FileNotFoundError, match='no results file'):
    coco_eval.read_results(tmp_path / 'missing.json', gt)


def _assert_concurrent_equals_sequential(ground_truth, results, engine):
  sequential = {iou_type: coco_eval.coco_table(ground_truth, r, iou_type, engine)
                for iou_type, r in results.items()}
  assert coco_eval.coco_tables(ground_truth, results, engine, processes=1) == sequential
  at_once = coco_eval.coco_tables(ground_truth, results, engine, processes=2, min_results=0)
  assert list(at_once) == list(results)
  assert at_once == sequential  # exactly: the same numbers, bit for bit
  return at_once


def test_concurrent_tables_equal_sequential_on_real_coco(coco_tiny_gt):
  bbox_results, segm_results = eval_benchmark.jittered_results(coco_tiny_gt, per_image=30)
  ground_truth = coco_eval.GroundTruth(coco_tiny_gt)
  tables = _assert_concurrent_equals_sequential(
      ground_truth, {'bbox': bbox_results, 'segm': segm_results}, 'faster_coco_eval')
  assert len(tables['segm']['per_category']) == len(coco_tiny_gt['categories'])


@pytest.mark.parametrize('engine', coco_eval.ENGINES)
def test_concurrent_tables_equal_sequential_on_synthetic_data(engine):
  gt = eval_benchmark.synthetic_ground_truth(12, seed=6, crowd_fraction=0.15)
  bbox_results, segm_results = eval_benchmark.jittered_results(gt, per_image=110, seed=7)
  ground_truth = coco_eval.GroundTruth(gt)
  # segm first: the spawned process then evaluates the boxes.
  _assert_concurrent_equals_sequential(
      ground_truth, {'segm': segm_results, 'bbox': bbox_results}, engine)
  _assert_concurrent_equals_sequential(ground_truth, {'bbox': [], 'segm': []}, engine)


def test_coco_tables_leave_results_as_they_were_and_print_in_order(capsys):
  gt = eval_benchmark.synthetic_ground_truth(4, seed=8)
  bbox_results, segm_results = eval_benchmark.jittered_results(gt, per_image=5)
  before = json.dumps([bbox_results, segm_results])
  coco_eval.coco_tables(coco_eval.GroundTruth(gt), {'bbox': bbox_results,
                                                    'segm': segm_results}, print_tables=True)
  assert json.dumps([bbox_results, segm_results]) == before
  printed = capsys.readouterr().out
  assert printed.index('COCO bbox: 20 results') < printed.index('COCO segm: 20 results')
  assert printed.count('Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all') == 2


def test_pycocotools_prints_the_table_we_print_for_faster_coco_eval(capsys):
  gt = eval_benchmark.synthetic_ground_truth(4, seed=9)
  bbox_results, _ = eval_benchmark.jittered_results(gt, per_image=5)
  tables = [coco_eval.coco_table(coco_eval.GroundTruth(gt), bbox_results, 'bbox', engine,
                                 print_table=True) for engine in coco_eval.ENGINES]
  printed = capsys.readouterr().out.splitlines()
  assert len(printed) == 24 and printed[:12] == printed[12:]
  assert tables[0]['AP'] == pytest.approx(tables[1]['AP'], abs=1e-12)


def test_num_processes():
  assert coco_eval.num_processes(1) == 1 and coco_eval.num_processes(3) == 3
  assert 1 <= coco_eval.num_processes(-1) <= 2
  assert coco_eval.num_processes(-1, num_iou_types=1) == 1
  for bad in (0, -2):
    with pytest.raises(ValueError, match='eval.coco_eval_workers'):
      coco_eval.num_processes(bad)


def test_results_with_unknown_images_are_refused():
  gt = coco_eval.GroundTruth(eval_benchmark.synthetic_ground_truth(2))
  bbox_results, _ = eval_benchmark.jittered_results(gt.dataset, per_image=2)
  with pytest.raises(ValueError, match='not in the ground truth'):
    coco_eval.coco_table(gt, [dict(bbox_results[0], image_id=99)], 'bbox')
