r"""Draws a COCO-format dataset's ground truth: boxes, category names and masks, into PNGs.

  python scripts/visualize_data.py --annotations data/coco/annotations/instances_val2017.json \
      --images data/coco/val2017 --out drawings --num 20
  python scripts/visualize_data.py --config configs/shapes_demo.py --split train --out drawings

Draws the first --num images of the file (or of the --config split, as training reads
it) into <out>/<image id>.png, each enlarged to at least 512 pixels on its shorter side:
every instance's mask (polygons or RLE) blended in its category's colour, its box and a
tag with its category name; crowd regions in grey, tagged 'crowd'; keypoints as dots.
As Detectron2's tools/visualize_data.py, it shows what the model will be trained on.
"""

import os
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from maskrcnn_jax import cli
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import image_files
from maskrcnn_jax.data import mask_decoding
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.inference import visualize

_ANNOTATIONS = flags.DEFINE_string('annotations', '', 'COCO-format JSON file')
_IMAGES = flags.DEFINE_string('images', '', 'folder of its images')
_CONFIG = config_flags.DEFINE_config_file('config', None, 'a configs/*.py file, instead '
                                          'of --annotations and --images')
_SPLIT = flags.DEFINE_enum('split', 'train', ['train', 'val'], 'the --config split')
_OUT = flags.DEFINE_string('out', '', 'folder for the drawings (made if missing)')
_NUM = flags.DEFINE_integer('num', 10, 'images to draw, the first of the split')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _OUT.value:
    raise app.UsageError('--out is required')
  if _NUM.value < 1:
    raise app.UsageError(f'--num must be positive; got {_NUM.value}')
  start = time.perf_counter()
  if _CONFIG.value is not None:
    dataset = pipeline.load_split(_CONFIG.value.data, _SPLIT.value)
  elif _ANNOTATIONS.value and _IMAGES.value:
    dataset = coco.load_coco(_ANNOTATIONS.value, _IMAGES.value, filter_empty=False)
  else:
    raise app.UsageError('give --annotations and --images, or --config (and --split)')
  names = dict(enumerate(dataset.class_names, 1))
  os.makedirs(_OUT.value, exist_ok=True)
  records = [dataset.records[i] for i in range(min(_NUM.value, len(dataset)))]
  for record in records:
    drawing = visualize.draw_annotations(
        image_files.read_image(record), record.boxes, record.classes,
        mask_decoding.decode_masks(record), names, record.is_crowd, record.keypoints)
    # PNG's fastest compression: the default level takes most of the time.
    drawing.save(os.path.join(_OUT.value, f'{record.image_id}.png'), compress_level=1)
  instances = sum(r.num_instances for r in records)
  crowd = sum(int(r.is_crowd.sum()) for r in records)
  print(f'drew {len(records)} images ({instances} instances, {crowd} crowd) into '
        f'{_OUT.value} ({time.perf_counter() - start:.1f} s)')


if __name__ == '__main__':
  cli.run(main, config_keys=False)
