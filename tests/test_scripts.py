"""The command-line scripts, run as a user runs them."""

import json
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from maskrcnn_jax import checkpoint
from maskrcnn_jax.data import shapes
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.train import step as step_lib
from maskrcnn_jax.train import workdir as workdir_lib
from tests.conftest import load_config
from tests.conftest import REPO_ROOT


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
    assert Image.open(tmp_path / 'out' / f'{stem}.png').size == (96, 96)
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
  from tests.evaluation.test_evaluator import _random_variables  # pylint: disable=import-outside-toplevel
  config = load_config('tiny')
  shapes.write_split(str(tmp_path / 'shapes'), 'val', num_images=2, image_size=64, seed=0)
  folder = tmp_path / 'shapes' / 'val'
  first = sorted(folder.iterdir())[0]
  (tmp_path / 'other').mkdir()
  twin = tmp_path / 'other' / first.name  # same name as an image of the folder
  twin.write_bytes(first.read_bytes())
  broken = tmp_path / 'other' / 'broken.jpg'
  broken.write_bytes(b'\xff\xd8 not a jpeg')
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
       f'--out={tmp_path / "out"}', '--min_score=0', str(folder), str(twin), str(broken)],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  assert f'skipping {broken}' in result.stderr
  assert f'1 of 4 images could not be read: {broken}' in result.stderr
  assert 'Traceback' not in result.stderr and 'class indices' not in result.stderr
  stems = sorted(p.stem for p in folder.iterdir()) + [first.stem + '_1']
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
