"""faster-coco-eval against pycocotools (the reference): identical 12-number tables.

All 12 numbers and every per-category AP equal within 1e-12 (the C++ accumulation sums
in another order, so the last bit or two may differ), for bbox and segm, on the real COCO
slice and on synthetic cases: crowd regions, empty images, images with more than 100
detections, a category with no detections, no results.
`coco_tables` with bbox and segm at once (a spawned process) gives exactly the tables of
one after the other, per-category APs included.
"""

import json
import logging

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
  # 12 stats, the title and 80 categories in 3 columns, for each engine.
  assert len(printed) == 2 * (12 + 1 + 27) and printed[:40] == printed[40:]
  assert printed[12] == 'per-category bbox AP:'
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


def _polygon_results(gt, seed=12):
  """Two detections per non-crowd instance: its polygon shifted a few pixels, the right
  category 90% of the time, random scores."""
  rng = np.random.default_rng(seed)
  results = []
  for annotation in gt['annotations']:
    if annotation['iscrowd']:
      continue
    for _ in range(2):
      points = np.reshape(annotation['segmentation'][0], (-1, 2)) + rng.normal(0, 4, 2)
      category = (annotation['category_id'] if rng.uniform() < 0.9
                  else int(rng.integers(1, 81)))
      results.append({'image_id': annotation['image_id'], 'category_id': category,
                      'score': float(rng.uniform(0.05, 1.0)),
                      'segmentation': [np.round(points.ravel(), 2).tolist()]})
  return results


def _uncompressed_rle(mask):
  """[h, w] {0, 1} -> COCO's uncompressed RLE: column-major runs, starting with zeros."""
  flat = mask.ravel(order='F')
  bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
  runs = np.diff(bounds).tolist()
  return {'size': list(mask.shape), 'counts': runs if flat[0] == 0 else [0] + runs}


def _pycocotools_segm(gt, path, convert):
  """pycocotools on a results file: its own loadRes(path), or (convert) loadRes of the
  entries with each segmentation made compressed RLE by its own annToRLE (its loadRes
  computes areas from compressed RLE only)."""
  import copy  # pylint: disable=import-outside-toplevel
  from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel
  from pycocotools.cocoeval import COCOeval  # pylint: disable=import-outside-toplevel
  with coco_eval.quiet():
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    if convert:
      with open(path) as f:
        results = json.load(f)
      for result in results:
        result['segmentation'] = coco.annToRLE(result)
      detections = coco.loadRes(results)
    else:
      detections = coco.loadRes(str(path))
    evaluator = COCOeval(coco, detections, 'segm')
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return dict(zip(coco_eval.STAT_NAMES, evaluator.stats),
              per_category=coco_eval.per_category_ap(evaluator))


def test_results_files_with_polygons_and_rle_evaluate_as_pycocotools(tmp_path):
  from pycocotools import mask as mask_util  # pylint: disable=import-outside-toplevel
  gt = eval_benchmark.synthetic_ground_truth(8, seed=11, crowd_fraction=0.15)
  images = {image['id']: image for image in gt['images']}
  polygons = _polygon_results(gt)
  compressed, uncompressed = [], []
  for result in polygons:
    image = images[result['image_id']]
    rle = mask_util.merge(mask_util.frPyObjects(result['segmentation'], image['height'],
                                                image['width']))
    compressed.append(dict(result, segmentation={'size': rle['size'],
                                                 'counts': rle['counts'].decode('ascii')}))
    uncompressed.append(dict(result, segmentation=_uncompressed_rle(mask_util.decode(rle))))
  files = {'polygons': polygons, 'uncompressed': uncompressed, 'compressed': compressed,
           'mixed': [(polygons, uncompressed, compressed)[k % 3][k]
                     for k in range(len(polygons))]}
  ground_truth = coco_eval.GroundTruth(gt)
  for name, results in files.items():
    path = tmp_path / f'{name}.json'
    path.write_text(json.dumps(results))
    reference = _pycocotools_segm(gt, path, convert=name != 'compressed')
    assert 0.2 < reference['AP'] < 0.9, reference['AP']
    iou_type, read = coco_eval.read_results(path, ground_truth)
    assert iou_type == 'segm' and len(read) == len(results)
    for engine in coco_eval.ENGINES:
      table = coco_eval.coco_table(ground_truth, read, 'segm', engine)
      np.testing.assert_allclose([table[n] for n in coco_eval.STAT_NAMES],
                                 [reference[n] for n in coco_eval.STAT_NAMES], rtol=0,
                                 atol=1e-12, err_msg=f'{name} {engine}')
      assert table['per_category'].keys() == reference['per_category'].keys()
      np.testing.assert_allclose(list(table['per_category'].values()),
                                 list(reference['per_category'].values()), rtol=0, atol=1e-12)
  assert json.loads((tmp_path / 'polygons.json').read_text()) == polygons  # file untouched


def test_detectron2_style_results_with_boxes_give_pycocotools_ap(tmp_path):
  """Detectron2 writes 'bbox' beside each 'segmentation'; pycocotools' loadRes then reads
  the file (polygons too) but takes box areas for the area ranges. Ours takes the mask's
  (as Detectron2's evaluator, which drops 'bbox'): the stats over all areas agree."""
  gt = eval_benchmark.synthetic_ground_truth(8, seed=13, crowd_fraction=0.1)
  results = []
  for result in _polygon_results(gt, seed=14):
    points = np.reshape(result['segmentation'][0], (-1, 2))
    (x1, y1), (x2, y2) = points.min(0), points.max(0)
    results.append(dict(result, bbox=[float(x1), float(y1), float(x2 - x1), float(y2 - y1)]))
  path = tmp_path / 'coco_instances_results.json'
  path.write_text(json.dumps(results))
  reference = _pycocotools_segm(gt, path, convert=False)
  ground_truth = coco_eval.GroundTruth(gt)
  iou_type, read = coco_eval.read_results(path, ground_truth)
  assert iou_type == 'segm'
  table = coco_eval.coco_table(ground_truth, read, 'segm', 'faster_coco_eval')
  over_all_areas = ('AP', 'AP50', 'AP75', 'AR1', 'AR10', 'AR100')
  np.testing.assert_allclose([table[n] for n in over_all_areas],
                             [reference[n] for n in over_all_areas], rtol=0, atol=1e-12)
  np.testing.assert_allclose(list(table['per_category'].values()),
                             list(reference['per_category'].values()), rtol=0, atol=1e-12)


def test_read_results_names_a_malformed_segmentation(tmp_path):
  gt = coco_eval.GroundTruth(eval_benchmark.synthetic_ground_truth(3, seed=2))
  image = gt.dataset['images'][0]
  common = {'image_id': image['id'], 'category_id': 1, 'score': 0.5}
  cases = {
      'two_points.json': ([[1, 1, 5, 5]], 'at least 3 points'),
      'other_size.json': ({'size': [4, 4], 'counts': '04'}, 'does not match the image size'),
      'short_runs.json': ({'size': [image['height'], image['width']], 'counts': [3, 4]},
                          'RLE counts sum to 7 pixels'),
  }
  for name, (segmentation, message) in cases.items():
    path = tmp_path / name
    path.write_text(json.dumps([dict(common, segmentation=[[2, 2, 9, 2, 9, 9]]),
                                dict(common, segmentation=segmentation)]))
    with pytest.raises(ValueError, match=f'{name}: entry 1 \\(image_id {image["id"]}\\): '
                                         f'.*{message}'):
      coco_eval.read_results(path, gt)
  with pytest.raises(ValueError, match='not compressed RLE.*read_results converts'):
    coco_eval.coco_table(gt, [dict(common, segmentation=[[2, 2, 9, 2, 9, 9]])], 'segm')


@pytest.mark.parametrize('engine', coco_eval.ENGINES)
def test_each_table_prints_once_with_its_per_category_aps(engine, caplog, capfd):
  caplog.set_level(logging.DEBUG)  # what a script's absl handler would show
  gt = eval_benchmark.synthetic_ground_truth(6, seed=15)
  bbox_results, segm_results = eval_benchmark.jittered_results(gt, per_image=8, seed=16)
  tables = coco_eval.coco_tables(coco_eval.GroundTruth(gt), {'bbox': bbox_results,
                                                             'segm': segm_results},
                                 engine, processes=2, print_tables=True, min_results=0)
  out, err = capfd.readouterr()  # this process's and the spawned one's
  assert out.count('Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all') == 2, out
  assert 'Average Precision' not in err and 'DONE' not in err, err
  logged = [r.getMessage() for r in caplog.records if r.name.startswith('faster_coco_eval')]
  assert not logged, logged[:3]
  names = {c['id']: c['name'] for c in gt['categories']}
  for iou_type in ('bbox', 'segm'):
    section = out[out.index(f'per-category {iou_type} AP:'):].splitlines()[1:]
    printed = {}
    for line in section[:-(-len(names) // 3)]:
      cells = line.split()
      printed.update({cells[i]: cells[i + 1] for i in range(0, len(cells), 2)})
    assert len(printed) == len(names)
    for category, ap in tables[iou_type]['per_category'].items():
      assert printed[names[category]] == ('-' if ap < 0 else f'{100 * ap:.1f}'), category


def test_per_category_lines():
  categories = [{'id': 3, 'name': 'person'}, {'id': 7, 'name': 'traffic light'},
                {'id': 9, 'name': 'a' * 40}, {'id': 11, 'name': 'dog'}]
  lines = coco_eval.per_category_lines('segm', {3: 0.5512, 7: -1.0, 9: 0.0, 11: 1.0},
                                       categories, columns=3)
  cell = lambda name, ap: f'{name:<24} {ap:>5}'  # names cut at 24 characters
  assert lines == [
      'per-category segm AP:',
      f"  {cell('person', '55.1')}   {cell('traffic light', '-')}   {cell('a' * 24, '0.0')}",
      f"  {cell('dog', '100.0')}"]
  assert coco_eval.per_category_lines('bbox', {}, categories) == []
