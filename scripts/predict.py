r"""Runs a checkpoint on images; writes a drawn PNG and a JSON of detections for each.

  python scripts/predict.py --checkpoint workdir/demo --out predictions/ image1.jpg photos/

  python scripts/predict.py --config configs/torchvision_r50_fpn.py \
      --checkpoint weights/torchvision_r50 --out predictions/ image1.jpg

`--checkpoint` is what scripts/evaluate.py takes: a training run's workdir, its
checkpoints folder (its newest step) or one step of it, or a `save_variables` directory
(converted weights). A training run's checkpoint brings the config the run saved
(<workdir>/config.json): --config is then optional, `--config.<key>=<value>` overrides
apply on top of it, and a --config given replaces it (a note names the keys where they
differ). Converted weights need --config; a checkpoint whose variables do not fit the
config's model is refused before anything is compiled.
Inputs are image files or folders (their images, not recursively). Labels name the
categories of `--annotations` (a COCO-format JSON; sorted by id they map to classes
1..K), else those the training run saved in <workdir>/categories.json, else class
indices (for torchvision's COCO models these are the COCO category ids). Outputs are
named after the input files (`photo.png`, `photo.json`; `photo_1.*` for a second
`photo`). Each detection in the JSON has `bbox_xyxy`, `score`, `category_id` (and
`category_name`), and with a mask head `mask_area` (pixels) and `segmentation`, the
mask as COCO RLE ({'size': [height, width], 'counts': str}; pycocotools'
`mask.decode` reads it). An unreadable image is skipped with a warning; the exit status
is then 1.
"""

import json
import os
import sys

from absl import app
from absl import flags
import numpy as np
from pycocotools import mask as mask_util

from maskrcnn_jax import checkpoint
from maskrcnn_jax import cli
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import image_files
from maskrcnn_jax.inference.predictor import Predictor
from maskrcnn_jax.inference.visualize import draw_detections
from maskrcnn_jax.train import preflight
from maskrcnn_jax.train import workdir as workdir_lib

cli.define_config_flag()  # read by cli.run_config
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


def detection_records(detections: dict[str, np.ndarray], names: dict[int, str]
                      ) -> list[dict]:
  """The JSON records of one image's detections (`Predictor.__call__`'s dict).

  Masks ([n, H, W] bool, with a mask head) become `mask_area` and `segmentation`, COCO
  RLE with `counts` as str.
  """
  records = []
  for i, (box, score, category) in enumerate(zip(
      detections['boxes'], detections['scores'], detections['classes'])):
    record = {'bbox_xyxy': [round(float(v), 2) for v in box], 'score': float(score),
              'category_id': int(category)}
    if int(category) in names:
      record['category_name'] = names[int(category)]
    if 'masks' in detections:
      mask = np.asarray(detections['masks'][i])
      rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
      record['mask_area'] = int(mask.sum())
      record['segmentation'] = {'size': [int(v) for v in rle['size']],
                                'counts': rle['counts'].decode('ascii')}
    records.append(record)
  return records


def main(argv):
  if not _CHECKPOINT.value:
    raise app.UsageError('--checkpoint is required')
  paths = image_paths(argv[1:])
  if not paths:
    raise app.UsageError('give at least one image file or folder of images')
  config = cli.run_config(_CHECKPOINT.value)
  preflight.check_canvases(config)
  category_ids, names = categories(config.model.num_classes)
  variables = checkpoint.load_variables(_CHECKPOINT.value)
  predictor = Predictor(config, variables, category_ids, source=_CHECKPOINT.value)
  os.makedirs(_OUT.value, exist_ok=True)
  used, failed = set(), []
  for path in paths:
    try:
      # Upright, as a phone photo is meant to be seen; 16-bit images scaled to 8 bits.
      image = image_files.read_image_file(path, exif_orientation=True)
    except (OSError, ValueError) as error:  # the error names the file
      print(f'warning: skipping {error}', file=sys.stderr)
      failed.append(path)
      continue
    detections = predictor(image)
    stem = output_stem(path, used)
    draw_detections(image, detections, names, _MIN_SCORE.value).save(
        os.path.join(_OUT.value, stem + '.png'))
    records = detection_records(detections, names)
    with open(os.path.join(_OUT.value, stem + '.json'), 'w') as f:
      json.dump({'image': path, 'detections': records}, f, indent=1)
    print(f'{path}: {len(records)} detections -> {_OUT.value}/{stem}.png')
  if failed:
    print(f'{len(failed)} of {len(paths)} images could not be read: {", ".join(failed[:5])}'
          f'{" ..." if len(failed) > 5 else ""}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main)
