"""Checks a COCO-format dataset once, whole: every image and mask decoded, problems counted.

  python scripts/check_dataset.py --annotations data/coco/annotations/instances_val2017.json \
      --images data/coco/val2017
  python scripts/check_dataset.py --config configs/maskrcnn_r50_fpn_1x.py --split train

Prints the count of each problem (missing fields, unknown ids, degenerate boxes, bad
segmentations, unreadable images, size mismatches; see maskrcnn_jax/data/coco_check.py)
with the first few of each, and exits with status 1 if there is any. Notices, which do
not stop training, follow with their first few: annotations without segmentation (box
only), 16-bit images (scaled to 8 bits), images with an EXIF orientation other than 1
(annotations are read in stored pixel order).
"""

import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from maskrcnn_jax import cli
from maskrcnn_jax.data import coco_check

_ANNOTATIONS = flags.DEFINE_string('annotations', '', 'COCO-format JSON file')
_IMAGES = flags.DEFINE_string('images', '', 'folder of its images')
_CONFIG = config_flags.DEFINE_config_file('config', None, 'a configs/*.py file, instead '
                                          'of --annotations and --images')
_SPLIT = flags.DEFINE_enum('split', 'train', ['train', 'val'], 'the --config split')
_WORKERS = flags.DEFINE_integer('workers', 0, 'decoding processes; 0: one per CPU')
_SHOWN = flags.DEFINE_integer('shown', 5, 'problems listed of each kind')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  annotations, images = _ANNOTATIONS.value, _IMAGES.value
  if _CONFIG.value is not None:
    annotations = _CONFIG.value.data[f'{_SPLIT.value}_annotations']
    images = _CONFIG.value.data[f'{_SPLIT.value}_images']
  if not annotations or not images:
    raise app.UsageError('give --annotations and --images, or --config (and --split)')
  start = time.perf_counter()
  found = coco_check.check_coco(annotations, images, _WORKERS.value)
  print(coco_check.summary(found, _SHOWN.value))
  total = coco_check.num_problems(found)
  notices = sum(len(found[notice]) for notice in coco_check.NOTICES)
  print(f'{annotations}: {total} problems, {notices} notices '
        f'({time.perf_counter() - start:.1f} s)')
  if total:
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main)
