r"""Runs a checkpoint on images; writes a drawn PNG and a JSON of detections for each.

  python scripts/predict.py --config configs/shapes_demo.py \
      --checkpoint workdir/demo/checkpoints --out predictions/ image1.jpg photos/

`--checkpoint` is what scripts/evaluate.py takes: a training run's checkpoints folder
(its newest step), one step of it, or a `save_variables` directory (converted weights).
Inputs are image files or folders (their images, not recursively). Labels name the
categories of `--annotations` (a COCO-format JSON; sorted by id they map to classes
1..K), else those the training run saved in <workdir>/categories.json, else class
indices (for torchvision's COCO models these are the COCO category ids). Outputs are
named after the input files (`photo.png`, `photo.json`; `photo_1.*` for a second
`photo`). An unreadable image is skipped with a warning; the exit status is then 1.
"""

import json
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np
from PIL import Image

from maskrcnn_jax import checkpoint
from maskrcnn_jax import cli
from maskrcnn_jax.data import coco
from maskrcnn_jax.inference.predictor import Predictor
from maskrcnn_jax.inference.visualize import draw_detections
from maskrcnn_jax.train import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'a configs/*.py file')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'a checkpoint directory (see above)')
_OUT = flags.DEFINE_string('out', 'predictions', 'output directory')
_ANNOTATIONS = flags.DEFINE_string('annotations', '', 'COCO JSON naming the categories')
_MIN_SCORE = flags.DEFINE_float('min_score', 0.5, 'draw detections scoring at least this')

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp')


def image_paths(inputs: list[str]) -> list[str]:
  """The files of `inputs`, each folder replaced by its image files (sorted)."""
  paths = []
  for path in inputs:
    if os.path.isdir(path):
      paths += sorted(os.path.join(path, name) for name in os.listdir(path)
                      if name.lower().endswith(IMAGE_SUFFIXES))
    else:
      paths.append(path)
  return paths


def output_stem(path: str, used: set[str]) -> str:
  """The file name of `path` without suffix, numbered `_1`, `_2` ... if already in `used`."""
  stem = os.path.splitext(os.path.basename(path))[0]
  candidate, number = stem, 0
  while candidate in used:
    number += 1
    candidate = f'{stem}_{number}'
  used.add(candidate)
  return candidate


def categories(num_classes: int) -> tuple[list[int] | None, dict[int, str]]:
  """(category id of each class 1..K or None, category id -> name) for the labels."""
  if _ANNOTATIONS.value:
    ids, names = coco.read_categories(_ANNOTATIONS.value)
    return (list(coco.check_num_classes(num_classes, ids, _ANNOTATIONS.value,
                                        labels_may_be_ids=True)), dict(zip(ids, names)))
  found = workdir_lib.find_categories(_CHECKPOINT.value)
  if found is None:
    print('no --annotations and no categories.json beside the checkpoint: labels are '
          'class indices', file=sys.stderr)
    return None, {}
  ids, names = found
  coco.check_num_classes(num_classes, ids, f'the run of {_CHECKPOINT.value}')
  return ids, dict(zip(ids, names))


def main(argv):
  config = _CONFIG.value
  if config is None or not _CHECKPOINT.value:
    raise app.UsageError('--config and --checkpoint are required')
  paths = image_paths(argv[1:])
  if not paths:
    raise app.UsageError('give at least one image file or folder of images')
  category_ids, names = categories(config.model.num_classes)
  predictor = Predictor(config, checkpoint.load_variables(_CHECKPOINT.value), category_ids)
  os.makedirs(_OUT.value, exist_ok=True)
  used, failed = set(), []
  for path in paths:
    try:
      with Image.open(path) as image:
        image = np.asarray(image.convert('RGB'))
    except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for unreadable files
      print(f'warning: skipping {path}: {error}', file=sys.stderr)
      failed.append(path)
      continue
    detections = predictor(image)
    stem = output_stem(path, used)
    draw_detections(image, detections, names, _MIN_SCORE.value).save(
        os.path.join(_OUT.value, stem + '.png'))
    records = [{'bbox_xyxy': [round(float(v), 2) for v in box], 'score': float(score),
                'category_id': int(category), 'mask_area': int(mask.sum()),
                **({'category_name': names[int(category)]} if int(category) in names else {})}
               for box, score, category, mask in zip(
                   detections['boxes'], detections['scores'], detections['classes'],
                   detections['masks'])]
    with open(os.path.join(_OUT.value, stem + '.json'), 'w') as f:
      json.dump({'image': path, 'detections': records}, f, indent=1)
    print(f'{path}: {len(records)} detections -> {_OUT.value}/{stem}.png')
  if failed:
    print(f'{len(failed)} of {len(paths)} images could not be read: {", ".join(failed[:5])}'
          f'{" ..." if len(failed) > 5 else ""}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main)
