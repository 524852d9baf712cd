"""evaluation/evaluator.py end to end: against a per-image Predictor loop, on two canvases,
and through scripts/evaluate.py."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
import pytest

from maskrcnn_jax import checkpoint
from maskrcnn_jax.data import image_files
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import shapes
from maskrcnn_jax.evaluation import coco_results
from maskrcnn_jax.evaluation import evaluator as evaluator_lib
from maskrcnn_jax.inference import serving
from maskrcnn_jax.inference.predictor import Predictor
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.runtime import distributed
from tests.conftest import load_config
from tests.conftest import REPO_ROOT
from tests.evaluation.test_metrics import _shapes_split
from tests.train.test_train import tiny_config


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


@pytest.mark.slow
def test_evaluator_matches_a_per_image_predictor_loop(tmp_path):
  config = _eval_config(tmp_path / 'data')
  variables = _random_variables(config)
  dataset = pipeline.load_split(config.data, 'val')
  evaluator = evaluator_lib.Evaluator(config, dataset, distributed.data_mesh())
  workdir = tmp_path / 'eval'
  metrics = evaluator(variables, workdir=str(workdir), progress=False)
  assert evaluator.forward._cache_size() == 1
  assert evaluator.kept_images == []
  assert metrics['images'] == 5 and metrics['images_per_second'] > 0
  assert json.loads((workdir / 'metrics.json').read_text())['bbox'] == metrics['bbox']
  bbox_results = json.loads((workdir / 'results_bbox.json').read_text())
  segm_results = json.loads((workdir / 'results_segm.json').read_text())
  assert {r['image_id'] for r in bbox_results} == {1, 2, 3, 4, 5}  # padding dropped
  assert len(segm_results) == len(bbox_results) > 0
  # In the main process (threads) instead of worker processes: the same files.
  config.eval.host_workers = 0
  in_process = evaluator(variables, workdir=str(tmp_path / 'eval0'), progress=False,
                         checkpoint='/runs/a/checkpoints/7', step=7, keep_images=2)
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
  # The first 2 images' detections, kept for TensorBoard, are the predictor's too.
  assert [kept.image_id for kept in evaluator.kept_images] == [1, 2]
  for kept, record in zip(evaluator.kept_images, dataset.records):
    expected = predictor(image_files.read_image(record))
    np.testing.assert_array_equal(kept.pixels, image_files.read_image(record))
    np.testing.assert_allclose(kept.detections['boxes'], expected['boxes'], atol=1e-3)
    np.testing.assert_allclose(kept.detections['scores'], expected['scores'], atol=1e-4)
    np.testing.assert_array_equal(kept.detections['classes'], expected['classes'])
    assert kept.detections['masks'].shape == expected['masks'].shape
    assert np.mean(kept.detections['masks'] != expected['masks']) < 1e-3


def test_a_kept_image_holds_the_detections_a_predictor_gives(tmp_path):
  """`kept_image`: an image's COCO results back to `serving.detections_in_original`'s."""
  record = _shapes_split(tmp_path, num_images=1, size=96).records[0]
  eval_config = load_config('tiny').eval
  rng = np.random.default_rng(0)
  outputs = {  # two valid detections of a 96 x 96 image resized to 48 x 48
      'boxes': np.array([[[3.0, 5.5, 40.0, 20.25], [10.0, 1.0, 12.5, 30.0],
                          [0.0, 0.0, 1.0, 1.0]]], np.float32),
      'scores': np.array([[0.9, 0.4, 0.1]], np.float32),
      'classes': np.array([[1, 3, 2]], np.int32),
      'masks': rng.random((1, 3, 28, 28)).astype(np.float32),
      'valid': np.array([[True, True, False]]),
      'image_info': np.array([[48, 48, 0.5, 0, 0]], np.float32),
      'image_id': np.array([record.image_id])}
  category_ids, hw = (1, 3, 7, 9), (record.height, record.width)
  bbox_results, segm_results = coco_results.batch_results(
      outputs, [hw], category_ids, eval_config.mask_threshold, eval_config.mask_paste)
  keypoint_results = [dict(r, keypoints=[4.5, 6.5, 0.8, 10.5, 12.5, 0.3]) for r in bbox_results]
  kept = evaluator_lib.kept_image(record, bbox_results, segm_results, keypoint_results)
  expected = serving.detections_in_original(
      outputs, 0, hw, outputs['image_info'][0], serving.category_ids_of_classes(4, category_ids),
      eval_config.mask_threshold, eval_config.mask_paste)
  assert kept.image_id == record.image_id
  np.testing.assert_array_equal(kept.pixels, image_files.read_image(record))
  np.testing.assert_allclose(kept.detections['boxes'], expected['boxes'], atol=1e-4)
  np.testing.assert_allclose(kept.detections['scores'], expected['scores'], atol=1e-6)
  np.testing.assert_array_equal(kept.detections['classes'], [1, 7])
  np.testing.assert_array_equal(kept.detections['classes'], expected['classes'])
  assert kept.detections['masks'].dtype == bool and kept.detections['masks'].any()
  np.testing.assert_array_equal(kept.detections['masks'], expected['masks'])
  np.testing.assert_allclose(kept.detections['keypoints'], [[[5, 7, 1], [11, 13, 1]]] * 2)
  np.testing.assert_allclose(kept.detections['keypoint_scores'], [[0.8, 0.3]] * 2)
  # An image without detections; a model without masks.
  empty = evaluator_lib.kept_image(record, [], [], None).detections
  assert empty['boxes'].shape == (0, 4) and empty['masks'].shape == (0, 96, 96)
  assert 'masks' not in evaluator_lib.kept_image(record, bbox_results, None, None).detections


def _config_file(tmp_path):
  """A configs/*.py-style file for the scripts: the tiny config on a val split."""
  path = tmp_path / 'tiny_eval.py'
  path.write_text(
      'import sys\n'
      f'sys.path.insert(0, {str(REPO_ROOT)!r})\n'
      'from tests.evaluation.test_evaluator import _eval_config\n'
      f'def get_config():\n  return _eval_config({str(tmp_path / "data")!r})\n')
  return path


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
