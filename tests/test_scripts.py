"""The command-line scripts, run as a user runs them."""

import json
import subprocess
import sys

import cv2
import jax
import numpy as np
from PIL import Image
from pycocotools import mask as mask_util
import pytest

from maskrcnn_jax import checkpoint
from maskrcnn_jax.data import shapes
from maskrcnn_jax.inference import predictor as predictor_lib
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.train import step as step_lib
from maskrcnn_jax.train import workdir as workdir_lib
from tests.conftest import load_config
from tests.conftest import REPO_ROOT
from tests.evaluation.test_evaluator import _random_variables


@pytest.mark.slow
def test_predict_writes_a_drawing_and_json_per_image(tmp_path):
  config_path = REPO_ROOT / 'configs' / 'shapes_demo.py'
  annotations, image_dir = shapes.write_split(str(tmp_path / 'shapes'), 'val', num_images=2,
                                              image_size=96, seed=0)
  images = sorted(str(p) for p in (tmp_path / 'shapes' / 'val').iterdir())
  assert len(images) == 2 and str(image_dir) in images[0]

  config = load_config('shapes_demo')
  height, width = config.data.image_size
  variables = step_lib.init_variables(mask_rcnn.MaskRCNN(config.model), (height, width),
                                      jax.random.key(0))
  checkpoint.save_variables(str(tmp_path / 'ckpt'), variables)

  subprocess.run(
      [sys.executable, str(REPO_ROOT / 'scripts' / 'predict.py'), f'--config={config_path}',
       f'--checkpoint={tmp_path / "ckpt"}', f'--out={tmp_path / "out"}',
       f'--annotations={annotations}', '--min_score=0', *images],
      check=True, cwd=REPO_ROOT, capture_output=True, text=True)

  for path in images:
    stem = path.rsplit('/', 1)[1].rsplit('.', 1)[0]
    width, height = Image.open(tmp_path / 'out' / f'{stem}.png').size
    assert width == height and width % 96 == 0  # small images are drawn enlarged
    with open(tmp_path / 'out' / f'{stem}.json') as f:
      detections = json.load(f)['detections']
    assert 0 < len(detections) <= config.model.roi_heads.detections_per_image
    scores = [d['score'] for d in detections]
    assert scores == sorted(scores, reverse=True)
    for d in detections:
      x1, y1, x2, y2 = d['bbox_xyxy']
      assert 0 <= x1 <= x2 <= 96 and 0 <= y1 <= y2 <= 96
      assert d['category_id'] in {c['id'] for c in shapes.CATEGORIES}
      assert 0 <= d['mask_area'] <= (x2 - x1 + 2) * (y2 - y1 + 2)


@pytest.mark.slow
def test_predict_reads_a_training_run_and_survives_bad_inputs(tmp_path):
  """A training run's checkpoints folder, its category names, a folder of images, two
  inputs of one name and an unreadable file."""
  config = load_config('tiny')
  shapes.write_split(str(tmp_path / 'shapes'), 'val', num_images=2, image_size=64, seed=0)
  folder = tmp_path / 'shapes' / 'val'
  first = sorted(folder.iterdir())[0]
  (tmp_path / 'other').mkdir()
  twin = tmp_path / 'other' / first.name  # same name as an image of the folder
  twin.write_bytes(first.read_bytes())
  broken = tmp_path / 'other' / 'broken.jpg'
  broken.write_bytes(b'\xff\xd8 not a jpeg')
  # The first image again: stored turned 90 degrees left with EXIF orientation 6 (turn
  # right to view), and as a 16-bit PNG; both must predict what the first image does.
  pixels = np.asarray(Image.open(first).convert('RGB'))
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(np.rot90(pixels).copy()).save(tmp_path / 'other' / 'rotated.png', exif=exif)
  cv2.imwrite(str(tmp_path / 'other' / 'deep.png'), pixels[..., ::-1].astype(np.uint16) * 257)
  variables = _random_variables(config)
  run = tmp_path / 'run'
  checkpoint.save_train_state(str(run / 'checkpoints'), 500, dict(
      variables, step=np.int32(500), opt_state={'momentum': variables['params']}), keep=1)
  names = [c['name'] for c in shapes.CATEGORIES]
  workdir_lib.save_run_files(str(run), config, [c['id'] for c in shapes.CATEGORIES], names,
                             'instances_train.json')

  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / 'scripts' / 'predict.py'),
       f'--config={REPO_ROOT / "configs" / "tiny.py"}', f'--checkpoint={run / "checkpoints"}',
       f'--out={tmp_path / "out"}', '--min_score=0', str(folder), str(twin), str(broken),
       str(tmp_path / 'other' / 'rotated.png'), str(tmp_path / 'other' / 'deep.png')],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  assert f'skipping {broken}' in result.stderr
  assert f'1 of 6 images could not be read: {broken}' in result.stderr
  assert 'Traceback' not in result.stderr and 'class indices' not in result.stderr
  stems = sorted(p.stem for p in folder.iterdir()) + [first.stem + '_1', 'rotated', 'deep']
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == sorted(
      f'{stem}.{suffix}' for stem in stems for suffix in ('json', 'png'))
  outputs = {json.loads((tmp_path / 'out' / f'{stem}.json').read_text())['image']: stem
             for stem in stems}
  assert outputs[str(first)] == first.stem and outputs[str(twin)] == first.stem + '_1'
  records = [d for stem in stems for d in json.loads(
      (tmp_path / 'out' / f'{stem}.json').read_text())['detections']]
  assert records  # random weights still score some boxes above the 0.05 threshold
  for d in records:
    assert d['category_name'] == names[d['category_id'] - 1]
  detections = {stem: json.loads((tmp_path / 'out' / f'{stem}.json').read_text())[
      'detections'] for stem in (first.stem, 'rotated', 'deep')}
  for stem in ('rotated', 'deep'):
    assert len(detections[stem]) == len(detections[first.stem]), stem
    for found, expected in zip(detections[stem], detections[first.stem]):
      np.testing.assert_allclose(found['bbox_xyxy'], expected['bbox_xyxy'], atol=0.02)
      assert found['segmentation']['size'] == [64, 64]


@pytest.mark.slow
def test_evaluate_and_predict_refuse_classes_that_are_not_the_categories(tmp_path):
  """91 classes (torchvision's habit) for 4 categories: refused before any inference."""
  annotations, image_dir = shapes.write_split(str(tmp_path / 'shapes'), 'val', num_images=1,
                                              image_size=64, seed=0)
  config = f'--config={REPO_ROOT / "configs" / "tiny.py"}'
  commands = {
      'evaluate.py': [f'--config.data.val_annotations={annotations}',
                      f'--config.data.val_images={image_dir}', f'--workdir={tmp_path}'],
      'predict.py': [f'--annotations={annotations}', f'--out={tmp_path / "out"}',
                     str(image_dir)]}
  for script, args in commands.items():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / 'scripts' / script), config,
         '--config.model.num_classes=91', f'--checkpoint={tmp_path / "nowhere"}', *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    assert (f'{script}: error: config.model.num_classes = 91 but {annotations} has 4 '
            'categories') in result.stderr


def _training_run(root):
  """A training run's workdir trained with overrides of configs/tiny.py (FPN 8 channels,
  128 x 128 canvas): random variables at step 5, config.json and categories.json."""
  config = load_config('tiny')
  config.model.fpn.channels = 8
  config.data.image_size = (128, 128)
  config.data.min_size = config.data.max_size = 128
  variables = _random_variables(config)
  run = root / 'run'
  checkpoint.save_train_state(str(run / 'checkpoints'), 5, dict(
      variables, step=np.int32(5), opt_state={'momentum': variables['params']}), keep=1)
  workdir_lib.save_run_files(str(run), config, [c['id'] for c in shapes.CATEGORIES],
                             [c['name'] for c in shapes.CATEGORIES], 'instances_train.json')
  return run, config, variables


def _script(script, *args):
  return subprocess.run([sys.executable, str(REPO_ROOT / 'scripts' / script), *args],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def _error_lines(stderr):
  """stderr without absl's log lines (I1202 ...)."""
  return [line for line in stderr.splitlines()
          if line and not (line[0] in 'IWE' and line[1:5].isdigit())]


@pytest.mark.slow
def test_predict_follows_the_runs_config_and_writes_masks_as_rle(tmp_path):
  """No --config: the run's saved config (its FPN width and canvas), an override on top
  of it, and each mask as COCO RLE decoding to the Predictor's mask."""
  run, config, variables = _training_run(tmp_path)
  shapes.write_split(str(tmp_path / 'shapes'), 'val', num_images=1, image_size=96, seed=0)
  image_path = sorted((tmp_path / 'shapes' / 'val').iterdir())[0]
  result = _script('predict.py', f'--checkpoint={run}', f'--out={tmp_path / "out"}',
                   '--min_score=0', '--config.model.roi_heads.detections_per_image=3',
                   str(image_path))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'note:' not in result.stderr
  records = json.loads((tmp_path / 'out' / f'{image_path.stem}.json').read_text())[
      'detections']

  config.model.roi_heads.detections_per_image = 3
  expected = predictor_lib.Predictor(config, variables, [c['id'] for c in shapes.CATEGORIES])(
      np.asarray(Image.open(image_path).convert('RGB')))
  assert len(records) == len(expected['scores']) == 3
  for record, mask, score in zip(records, expected['masks'], expected['scores']):
    assert record['segmentation']['size'] == [96, 96]
    assert isinstance(record['segmentation']['counts'], str)
    decoded = mask_util.decode({'size': record['segmentation']['size'],
                                'counts': record['segmentation']['counts'].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), mask)
    assert record['mask_area'] == int(mask.sum())
    assert record['score'] == pytest.approx(float(score), abs=1e-5)


@pytest.mark.slow
def test_a_run_config_or_a_given_one_and_a_misfit_checkpoint_is_one_line(tmp_path):
  """Each script: a --config given replaces the run's (a note names the differences) and
  its FPN width does not fit the checkpoint; without --config, an override of the box
  head's width does not either. Both refused in one line before anything compiles."""
  run, _, _ = _training_run(tmp_path)
  annotations, image_dir = shapes.write_split(str(tmp_path / 'shapes'), 'val', num_images=1,
                                              image_size=64, seed=0)
  tiny = f'--config={REPO_ROOT / "configs" / "tiny.py"}'
  commands = {
      'evaluate.py': [f'--config.data.val_annotations={annotations}',
                      f'--config.data.val_images={image_dir}', f'--workdir={tmp_path / "e"}'],
      'predict.py': [f'--out={tmp_path / "p"}', str(image_dir)],
      'export.py': [f'--out={tmp_path / "x"}']}
  checkpoint_dir = run / 'checkpoints' / '5'
  for script, args in commands.items():
    result = _script(script, tiny, f'--checkpoint={checkpoint_dir}', *args)
    assert result.returncode == 1, (script, result.stderr[-3000:])
    note, error, _ = _error_lines(result.stderr)
    assert note == (
        f'note: --config differs from {run / "config.json"} in data.image_size (128, 128) -> '
        '(64, 64), data.max_size 128 -> 64, data.min_size 128 -> 64, model.fpn.channels 8 '
        '-> 16' + (' (and 2 keys that do not change predictions)' if script == 'evaluate.py'
                   else '') + '; using --config (leave it out to use the saved config)')
    assert error == (
        f'{script}: error: {checkpoint_dir}: variable params/fpn/lateral2/kernel has shape '
        '(1, 1, 64, 8) but the model of this config needs (1, 1, 64, 16) (and 21 more): '
        'check model.fpn.channels against the config that trained it')

    result = _script(script, f'--checkpoint={run}', '--config.model.box_head.fc_dim=64',
                     *args)
    assert result.returncode == 1, (script, result.stderr[-3000:])
    assert _error_lines(result.stderr)[0] == (
        f'{script}: error: {run}: variable params/box_head/fc6/kernel has shape (392, 32) '
        'but the model of this config needs (392, 64) (and 5 more): check model.box_head '
        '(fc_dim, pooled_size) against the config that trained it')
  assert not (tmp_path / 'x').exists() and not (tmp_path / 'p').exists()


def test_evaluate_checks_its_workdir_before_reading_anything(tmp_path):
  (tmp_path / 'file').write_text('')
  result = _script('evaluate.py', f'--config={REPO_ROOT / "configs" / "tiny.py"}',
                   '--config.data.val_annotations=/nowhere/val.json',
                   f'--checkpoint={tmp_path / "nowhere"}', f'--workdir={tmp_path / "file" / "e"}')
  assert result.returncode == 1, result.stderr[-3000:]
  assert _error_lines(result.stderr)[0] == (
      f'evaluate.py: error: --workdir={tmp_path / "file" / "e"}: cannot write there (Not a '
      'directory); choose a folder you can write to')
