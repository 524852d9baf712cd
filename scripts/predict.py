"""Runs a checkpoint on images; writes a drawn PNG and a JSON of detections for each.

  python scripts/predict.py --config configs/torchvision_r50_fpn.py \
      --checkpoint converted_dir --out predictions/ image1.jpg image2.jpg

`--annotations` takes a COCO-format JSON whose categories name the classes (sorted by
id they map to classes 1..K); without it, labels are class indices, which for
torchvision's COCO models are already COCO category ids.
"""

import json
import os

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np
from PIL import Image

from maskrcnn_jax import checkpoint
from maskrcnn_jax.predictor import Predictor
from maskrcnn_jax.visualize import draw_detections

_CONFIG = config_flags.DEFINE_config_file('config', None, 'a configs/*.py file')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'orbax checkpoint directory')
_OUT = flags.DEFINE_string('out', 'predictions', 'output directory')
_ANNOTATIONS = flags.DEFINE_string('annotations', '', 'COCO JSON naming the categories')
_MIN_SCORE = flags.DEFINE_float('min_score', 0.5, 'draw detections scoring at least this')


def main(argv):
  config = _CONFIG.value
  if config is None or not _CHECKPOINT.value:
    raise app.UsageError('--config and --checkpoint are required')
  if len(argv) < 2:
    raise app.UsageError('give at least one image path')
  names, category_ids = {}, None
  if _ANNOTATIONS.value:
    with open(_ANNOTATIONS.value) as f:
      categories = sorted(json.load(f)['categories'], key=lambda c: c['id'])
    names = {c['id']: c['name'] for c in categories}
    category_ids = [c['id'] for c in categories]
  predictor = Predictor(config, checkpoint.restore_variables(_CHECKPOINT.value),
                        category_ids)
  os.makedirs(_OUT.value, exist_ok=True)
  for path in argv[1:]:
    image = np.asarray(Image.open(path).convert('RGB'))
    detections = predictor(image)
    stem = os.path.splitext(os.path.basename(path))[0]
    draw_detections(image, detections, names, _MIN_SCORE.value).save(
        os.path.join(_OUT.value, stem + '.png'))
    records = [{'bbox_xyxy': [round(float(v), 2) for v in box], 'score': float(score),
                'category_id': int(category), 'mask_area': int(mask.sum())}
               for box, score, category, mask in zip(
                   detections['boxes'], detections['scores'], detections['classes'],
                   detections['masks'])]
    with open(os.path.join(_OUT.value, stem + '.json'), 'w') as f:
      json.dump({'image': path, 'detections': records}, f, indent=1)
    print(f'{path}: {len(records)} detections -> {_OUT.value}/{stem}.png')


if __name__ == '__main__':
  app.run(main)
