"""COCO evaluation against pycocotools run directly, and the Evaluator end to end."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
import pytest

from maskrcnn_jax import checkpoint
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import image_files
from maskrcnn_jax.data import mask_decoding
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import shapes
from maskrcnn_jax.evaluation import coco_results
from maskrcnn_jax.evaluation import evaluator as evaluator_lib
from maskrcnn_jax.evaluation import metrics as metrics_lib
from maskrcnn_jax.inference.predictor import Predictor
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.runtime import distributed
from tests.conftest import load_config
from tests.conftest import REPO_ROOT
from tests.test_train import tiny_config


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


def test_model_classes_map_to_category_ids(tmp_path):
  dataset = dataclasses.replace(_shapes_split(tmp_path, num_images=1), category_ids=(1, 3, 7, 9))
  assert evaluator_lib.category_id_of_class(4, dataset) == (1, 3, 7, 9)  # contiguous classes
  # torchvision's COCO models: a class for every id, the label is the id.
  assert evaluator_lib.category_id_of_class(10, dataset) == tuple(range(1, 11))
  with pytest.raises(ValueError, match='num_classes = 5 .* 4 categories'):
    evaluator_lib.category_id_of_class(5, dataset)


def _eval_config(root):
  """The tiny model on a 5-image val split of 96x96 images (resized to 64x64)."""
  config = tiny_config(str(root))
  config.data.val_annotations, config.data.val_images = shapes.write_split(
      str(root), 'val', 5, 96, seed=1)
  config.eval.batch_size = 2
  config.eval.mask_threshold = 0.45  # random weights give mask probabilities near 0.46
  return config


def _random_variables(config):
  """Random variables of the model's shapes: kernels N(0, 1 / fan_in), identity norms.

  From `jax.eval_shape`, because a real `init` compiles (or runs eagerly) the whole model,
  which takes longer on CPU than the evaluation under test.
  """
  height, width = config.data.image_size
  shapes_tree = jax.eval_shape(
      mask_rcnn.MaskRCNN(config.model).init, jax.random.key(0),
      np.zeros((1, height, width, 3), np.uint8),
      np.array([[height, width, 1.0, 0.0, 0.0]], np.float32))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if 'kernel' in name:
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.normal(0, fan_in ** -0.5, leaf.shape).astype(np.float32)
    if 'scale' in name or 'var' in name:
      return np.ones(leaf.shape, np.float32)
    return np.zeros(leaf.shape, np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes_tree)


def test_evaluator_matches_a_per_image_predictor_loop(tmp_path):
  config = _eval_config(tmp_path / 'data')
  variables = _random_variables(config)
  dataset = pipeline.load_split(config.data, 'val')
  evaluator = evaluator_lib.Evaluator(config, dataset, distributed.data_mesh())
  workdir = tmp_path / 'eval'
  metrics = evaluator(variables, workdir=str(workdir), progress=False)
  assert evaluator.forward._cache_size() == 1
  assert metrics['images'] == 5 and metrics['images_per_second'] > 0
  assert json.loads((workdir / 'metrics.json').read_text())['bbox'] == metrics['bbox']
  bbox_results = json.loads((workdir / 'results_bbox.json').read_text())
  segm_results = json.loads((workdir / 'results_segm.json').read_text())
  assert {r['image_id'] for r in bbox_results} == {1, 2, 3, 4, 5}  # padding dropped
  assert len(segm_results) == len(bbox_results) > 0
  # In the main process (threads) instead of worker processes: the same files.
  config.eval.host_workers = 0
  in_process = evaluator(variables, workdir=str(tmp_path / 'eval0'), progress=False,
                         checkpoint='/runs/a/checkpoints/7', step=7)
  for name in ('results_bbox.json', 'results_segm.json'):
    assert (tmp_path / 'eval0' / name).read_text() == (workdir / name).read_text()
  assert in_process['bbox'] == metrics['bbox'] and in_process['segm'] == metrics['segm']
  written = json.loads((tmp_path / 'eval0' / 'metrics.json').read_text())
  assert (written['checkpoint'], written['step']) == ('/runs/a/checkpoints/7', 7)
  assert json.loads((tmp_path / 'eval0' / 'metrics_by_step.json').read_text()) == \
      {'7': written}

  predictor = Predictor(config, variables, dataset.category_ids)
  for record in dataset.records:
    expected = predictor(image_files.read_image(record))
    boxes = [r for r in bbox_results if r['image_id'] == record.image_id]
    segms = [r for r in segm_results if r['image_id'] == record.image_id]
    assert len(boxes) == len(expected['boxes'])
    xywh = np.array([r['bbox'] for r in boxes])
    np.testing.assert_allclose(xywh[:, :2], expected['boxes'][:, :2], atol=1e-3)
    np.testing.assert_allclose(xywh[:, :2] + xywh[:, 2:], expected['boxes'][:, 2:], atol=1e-3)
    assert xywh[:, :2].max() > 64  # original 96x96 pixels, not the 64x64 resized frame
    np.testing.assert_allclose([r['score'] for r in boxes], expected['scores'], atol=1e-4)
    np.testing.assert_array_equal([r['category_id'] for r in boxes], expected['classes'])
    masks = np.stack([mask_util.decode(r['segmentation']) for r in segms]).astype(bool)
    assert masks.shape == expected['masks'].shape and masks.sum() > 1000
    assert np.mean(masks != expected['masks']) < 1e-3


def _config_file(tmp_path):
  """A configs/*.py-style file for the scripts: the tiny config on a val split."""
  path = tmp_path / 'tiny_eval.py'
  path.write_text(
      'import sys\n'
      f'sys.path.insert(0, {str(REPO_ROOT)!r})\n'
      'from tests.test_evaluate import _eval_config\n'
      f'def get_config():\n  return _eval_config({str(tmp_path / "data")!r})\n')
  return path


def test_script_evaluates_a_checkpoint_and_names_a_missing_one(tmp_path):
  config_file = _config_file(tmp_path)
  config = _eval_config(tmp_path / 'data')
  checkpoint.save_variables(str(tmp_path / 'ckpt'), _random_variables(config))
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  command = [sys.executable, 'scripts/evaluate.py', f'--config={config_file}',
             '--config.eval.batch_size=4', f'--workdir={tmp_path / "eval"}']
  result = subprocess.run(command + [f'--checkpoint={tmp_path / "ckpt"}'], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
  assert metrics['images'] == 5
  assert set(metrics['segm']['per_category']) == {c['name'] for c in shapes.CATEGORIES}
  missing = tmp_path / 'no_such_checkpoint'
  result = subprocess.run(command + [f'--checkpoint={missing}'], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert str(missing) in result.stderr


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


def test_transposed_detections_give_the_untransposed_results():
  rng = np.random.default_rng(0)
  boxes = np.array([[3.0, 5.5, 40.0, 20.25], [10.0, 1.0, 12.5, 30.0]], np.float32)
  probs = rng.random((2, 28, 28)).astype(np.float32)
  scores, classes = np.array([0.9, 0.4], np.float32), np.array([1, 2], np.int32)
  eval_config = load_config('tiny').eval
  info = np.array([48, 32, 0.5, 0, 0], np.float32)  # resized 48 x 32 of a 96 x 64 image
  threshold, paste = eval_config.mask_threshold, eval_config.mask_paste
  plain = coco_results.image_results(boxes, scores, classes, probs, 7, info, (96, 64), (1, 3),
                                     threshold, paste)
  # The same detections of the image lying transposed (32 x 48) on a landscape canvas.
  transposed_info = np.array([32, 48, 0.5, 0, 1], np.float32)
  transposed = coco_results.image_results(
      boxes[:, [1, 0, 3, 2]], scores, classes, probs.transpose(0, 2, 1), 7, transposed_info,
      (96, 64), (1, 3), threshold, paste)
  assert plain == transposed
  np.testing.assert_allclose(plain[0][0]['bbox'], [6.0, 11.0, 74.0, 29.5])
  assert mask_util.decode(plain[1][0]['segmentation']).shape == (96, 64)




def test_predictor_runs_each_canvas_once_and_undoes_the_transpose(tmp_path):
  config = _eval_config(tmp_path / 'data')
  d = config.data
  # Unresized inputs (longer side 96) on two canvases: 64 x 128 landscapes (portraits
  # transposed onto it) and 128 x 128.
  d.min_size = d.max_size = 96
  d.image_size, d.extra_canvases, d.transpose_portrait = (128, 128), ((64, 128),), True
  predictor = Predictor(config, _random_variables(config))
  rng = np.random.default_rng(0)
  landscape = rng.integers(0, 256, (48, 96, 3), dtype=np.uint8)
  square = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
  portrait = landscape.transpose(1, 0, 2)
  results = predictor.predict_batch([landscape, square, portrait])
  assert predictor.num_compilations == 2
  by_landscape, by_portrait = results[0], results[2]
  assert len(by_landscape['boxes']) > 0
  np.testing.assert_array_equal(by_portrait['boxes'], by_landscape['boxes'][:, [1, 0, 3, 2]])
  np.testing.assert_array_equal(by_portrait['scores'], by_landscape['scores'])
  np.testing.assert_array_equal(by_portrait['classes'], by_landscape['classes'])
  np.testing.assert_array_equal(by_portrait['masks'], by_landscape['masks'].transpose(0, 2, 1))
  assert by_portrait['masks'].shape[1:] == (96, 48)
  # The square image alone gives what it gave in the mixed batch.
  alone = predictor(square)
  np.testing.assert_array_equal(alone['boxes'], results[1]['boxes'])
  assert predictor.num_compilations == 2


def _mixed_orientation_split(root):
  """A COCO val folder of landscape, portrait and square images (one square instance each).

  The portrait is the transpose of the first landscape, so its detections must be the
  transposed ones.
  """
  rng = np.random.default_rng(3)
  landscape = rng.integers(0, 256, (48, 96, 3), dtype=np.uint8)
  pixels = [landscape, rng.integers(0, 256, (48, 96, 3), dtype=np.uint8),
            landscape.transpose(1, 0, 2), rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)]
  os.makedirs(root / 'val')
  images, annotations = [], []
  for i, image in enumerate(pixels, start=1):
    Image.fromarray(image).save(root / 'val' / f'{i}.png')
    height, width = image.shape[:2]
    images.append({'id': i, 'file_name': f'{i}.png', 'height': height, 'width': width})
    annotations.append({'id': i, 'image_id': i, 'category_id': 1 + i % 4, 'iscrowd': 0,
                        'bbox': [4, 6, 20, 30], 'area': 600.0,
                        'segmentation': [[4, 6, 24, 6, 24, 36, 4, 36]]})
  path = root / 'instances_val.json'
  path.write_text(json.dumps({'images': images, 'annotations': annotations,
                              'categories': list(shapes.CATEGORIES)}))
  return str(path), str(root / 'val')


def test_evaluator_on_two_canvases_matches_the_predictor(tmp_path):
  config = _eval_config(tmp_path / 'data')
  d = config.data
  d.val_annotations, d.val_images = _mixed_orientation_split(tmp_path / 'mixed')
  d.min_size = d.max_size = 96  # unresized: the portrait is exactly the transposed landscape
  d.image_size, d.extra_canvases, d.transpose_portrait = (128, 128), ((64, 128),), True
  variables = _random_variables(config)
  dataset = pipeline.load_split(d, 'val')
  evaluator = evaluator_lib.Evaluator(config, dataset, distributed.data_mesh())
  workdir = tmp_path / 'eval'
  evaluator(variables, workdir=str(workdir), progress=False)
  assert evaluator.forward._cache_size() == 2
  bbox_results = json.loads((workdir / 'results_bbox.json').read_text())
  segm_results = json.loads((workdir / 'results_segm.json').read_text())
  predictor = Predictor(config, variables, dataset.category_ids)
  for record in dataset.records:
    expected = predictor(image_files.read_image(record))
    boxes = np.array([r['bbox'] for r in bbox_results if r['image_id'] == record.image_id])
    segms = [r for r in segm_results if r['image_id'] == record.image_id]
    assert len(boxes) == len(expected['boxes']) > 0
    np.testing.assert_allclose(boxes[:, :2], expected['boxes'][:, :2], atol=1e-3)
    np.testing.assert_allclose(boxes[:, :2] + boxes[:, 2:], expected['boxes'][:, 2:],
                               atol=1e-3)
    masks = np.stack([mask_util.decode(r['segmentation']) for r in segms]).astype(bool)
    assert masks.shape == expected['masks'].shape
    assert np.mean(masks != expected['masks']) < 1e-3
  # The portrait (image 3) is the transposed landscape (image 1): so are its results.
  first, third = ([r for r in bbox_results if r['image_id'] == i] for i in (1, 3))
  np.testing.assert_allclose([r['bbox'] for r in third],
                             [np.array(r['bbox'])[[1, 0, 3, 2]] for r in first], atol=1e-4)
