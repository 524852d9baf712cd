"""The built-in demo on synthetic shapes: data -> batches -> jitted model -> drawn predictions.

  python scripts/demo.py --workdir workdir/demo

Writes the shapes dataset (COCO JSON + PNGs) under <workdir>/shapes, reads the val split
through the same pipeline as COCO, runs the compiled Mask R-CNN forward pass over it in
fixed-shape batches, and draws the Predictor's output for a few images into
<workdir>/predictions. The weights are a fresh initialisation: training is not part of
the package yet, so this run checks the whole inference path, not accuracy.
"""

import os
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from maskrcnn_jax.data import coco
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import shapes
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.predictor import Predictor
from maskrcnn_jax.visualize import draw_detections

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/shapes_demo.py', 'config file')
_WORKDIR = flags.DEFINE_string('workdir', 'workdir/demo', 'where data and outputs go')
_NUM_DRAWN = flags.DEFINE_integer('num_drawn', 4, 'val images to draw')


def main(argv):
  del argv
  config = _CONFIG.value
  root = os.path.join(_WORKDIR.value, 'shapes')
  start = time.perf_counter()
  splits = shapes.write_shapes(root, num_train=64, num_val=32,
                               image_size=config.data.image_size[0], seed=config.train.seed)
  config.data.val_annotations, config.data.val_images = splits['val']
  config.data.train_annotations, config.data.train_images = splits['train']
  print(f'shapes dataset written to {root} in {time.perf_counter() - start:.1f}s')

  val = pipeline.load_split(config.data, 'val')
  model = mask_rcnn.MaskRCNN(config.model)
  height, width = config.data.image_size
  variables = model.init(jax.random.key(config.train.seed),
                         np.zeros((1, height, width, 3), np.float32),
                         np.array([[height, width, 1.0, 0.0]], np.float32))
  forward = jax.jit(model.apply)
  num_images, seconds, first = 0, 0.0, None
  with pipeline.Batches(val, config.data, config.eval.batch_size, train=False) as batches:
    for batch in batches:
      start = time.perf_counter()
      outputs = jax.block_until_ready(forward(variables, batch['images'], batch['image_info']))
      elapsed = time.perf_counter() - start
      if first is None:
        first = elapsed
      else:
        seconds += elapsed
        num_images += len(batch['images'])
      assert outputs['boxes'].shape[:2] == outputs['valid'].shape
  print(f'forward pass: first batch (with compilation) {first:.1f}s; then '
        f'{num_images / max(seconds, 1e-9):.1f} images/s on {jax.devices()[0].platform}')

  predictor = Predictor(config, variables, category_ids=list(val.category_ids))
  out_dir = os.path.join(_WORKDIR.value, 'predictions')
  os.makedirs(out_dir, exist_ok=True)
  names = dict(zip(val.category_ids, val.class_names))
  for record in val.records[:_NUM_DRAWN.value]:
    image = coco.read_image(record)
    detections = predictor(image)
    path = os.path.join(out_dir, f'{record.image_id}.png')
    draw_detections(image, detections, names, min_score=0.0).save(path)
    print(f'{path}: {len(detections["scores"])} detections')
  print(f'Predictor compiled {predictor.num_compilations} time(s) for '
        f'{_NUM_DRAWN.value} images')


if __name__ == '__main__':
  app.run(main)
