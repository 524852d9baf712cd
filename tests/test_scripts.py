"""The command-line scripts, run as a user runs them."""

import json
import subprocess
import sys

import jax
import numpy as np
from PIL import Image

from maskrcnn_jax import checkpoint
from maskrcnn_jax.data import shapes
from maskrcnn_jax.model import mask_rcnn
from tests.conftest import REPO_ROOT
from tests.conftest import load_config


def test_predict_writes_a_drawing_and_json_per_image(tmp_path):
  config_path = REPO_ROOT / 'configs' / 'shapes_demo.py'
  annotations, image_dir = shapes.write_split(str(tmp_path / 'shapes'), 'val', num_images=2,
                                              image_size=96, seed=0)
  images = sorted(str(p) for p in (tmp_path / 'shapes' / 'val').iterdir())
  assert len(images) == 2 and str(image_dir) in images[0]

  config = load_config('shapes_demo')
  height, width = config.data.image_size
  variables = mask_rcnn.MaskRCNN(config.model).init(
      jax.random.key(0), np.zeros((1, height, width, 3), np.float32),
      np.array([[height, width, 1.0, 0.0]], np.float32))
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
