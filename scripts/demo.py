"""The built-in demo: generate shapes data, train a small Mask R-CNN, evaluate, draw.

  python scripts/demo.py --workdir workdir/demo

Writes the synthetic shapes dataset (COCO JSON + PNGs) under <workdir>/shapes, trains
`configs/shapes_demo.py` on it (checkpoints and TensorBoard under <workdir>; running the
command again resumes), evaluates the final model with COCO metrics on the val split
(<workdir>/eval/metrics.json) and draws its predictions for a few val images into
<workdir>/predictions. Any config key can be overridden: --config.train.num_steps=200.
Ctrl-C saves a checkpoint of the step in flight and exits (status 130): run the command
again to resume.
"""

import os
import sys
import time

from absl import flags
from ml_collections import config_flags

from maskrcnn_jax import checkpoint
from maskrcnn_jax import cli
from maskrcnn_jax.data import image_files
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import shapes
from maskrcnn_jax.inference.predictor import Predictor
from maskrcnn_jax.inference.visualize import draw_detections
from maskrcnn_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/shapes_demo.py', 'config file')
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/demo', 'where data and outputs go')
_NUM_TRAIN = flags.DEFINE_integer('num_train', 1000, 'training images to generate')
_NUM_VAL = flags.DEFINE_integer('num_val', 100, 'val images to generate')
_NUM_DRAWN = flags.DEFINE_integer('num_drawn', 6, 'val images to draw')


def main(argv):
  del argv
  config = _CONFIG.value
  workdir = _WORKDIR.value
  start = time.perf_counter()
  splits = shapes.write_shapes(os.path.join(workdir, 'shapes'), num_train=_NUM_TRAIN.value,
                               num_val=_NUM_VAL.value, image_size=config.data.image_size[0],
                               seed=config.train.seed,
                               keypoints=config.data.num_keypoints > 0)
  config.data.train_annotations, config.data.train_images = splits['train']
  config.data.val_annotations, config.data.val_images = splits['val']
  print(f'shapes dataset: {_NUM_TRAIN.value} train and {_NUM_VAL.value} val images in '
        f'{time.perf_counter() - start:.1f}s')

  try:
    result = loop.train_and_evaluate(config, workdir)
  except loop.Interrupted as stopped:
    print(f'{os.path.basename(sys.argv[0])}: {stopped}', file=sys.stderr)
    sys.exit(stopped.exit_status)
  metrics = result['eval']
  keypoint_ap = (f', keypoint AP {metrics["keypoints"]["AP"]:.3f}'
                 if 'keypoints' in metrics else '')
  print(f'after {result["step"]} steps: bbox AP {metrics["bbox"]["AP"]:.3f}, segm AP '
        f'{metrics["segm"]["AP"]:.3f}{keypoint_ap} '
        f'({os.path.join(workdir, "eval", "metrics.json")})')

  val = pipeline.load_split(config.data, 'val')
  variables = checkpoint.load_variables(os.path.join(workdir, 'checkpoints'))
  predictor = Predictor(config, variables, category_ids=list(val.category_ids))
  out_dir = os.path.join(workdir, 'predictions')
  os.makedirs(out_dir, exist_ok=True)
  names = dict(zip(val.category_ids, val.class_names))
  for record in val.records[:_NUM_DRAWN.value]:
    image = image_files.read_image(record)
    path = os.path.join(out_dir, f'{record.image_id}.png')
    draw_detections(image, predictor(image), names, min_score=0.5).save(path)
  print(f'drew {min(_NUM_DRAWN.value, len(val))} val images into {out_dir} '
        f'(detections scoring >= 0.5); total {time.perf_counter() - start:.0f}s')


if __name__ == '__main__':
  cli.run(main)
