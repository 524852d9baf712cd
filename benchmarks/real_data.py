"""What a COCO-format folder costs (`--annotations/--images`): canvas padding, real steps.

- `padded_pixel_ratio`: the config's canvases over the folder's image sizes at
  evaluation scale: canvas pixels over resized-image pixels (the compute padding wastes).
- `time_real_train`: train steps on real batches (`pipeline.Batches`), timing how much of
  each step waited for input: the wait is timed around `next(batches)` here, since the
  pipeline itself carries no timers.
"""

import collections
import statistics
from typing import Any

import jax
import ml_collections

from benchmarks import timing
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import transforms
from maskrcnn_jax.runtime import distributed
from maskrcnn_jax.train import step as step_lib


def image_sizes(annotations: str, images: str) -> list[tuple[int, int]]:
  """(height, width) of every image of the folder, empty ones included."""
  dataset = coco.load_coco(annotations, images, filter_empty=False)
  return [(r.height, r.width) for r in dataset.records]


def padded_pixel_ratio(data_config: ml_collections.ConfigDict,
                       sizes: list[tuple[int, int]]) -> dict[str, Any]:
  """Canvas pixels over resized-image pixels at evaluation scale, over original sizes."""
  padded = resized = 0
  canvases = collections.Counter()
  for height, width in sizes:
    canvas = transforms.choose_canvas(height, width, data_config, train=False)
    new_h, new_w, _ = transforms.resize_shape(height, width, data_config.resize_mode,
                                              data_config.min_size, data_config.max_size)
    padded += canvas.height * canvas.width
    resized += new_h * new_w
    canvases[f'{canvas.height}x{canvas.width}'] += 1
  return {'images': len(sizes), 'padded_over_resized': padded / resized,
          'images_per_canvas': dict(canvases)}


def time_real_train(config: ml_collections.ConfigDict, annotations: str, images: str,
                    steps: int, seed: int) -> dict[str, Any]:
  """Train steps on batches from a COCO-format folder: how long each waited for input.

  One untimed step per canvas compiles first; then `steps` steps, each the wait for its
  batch (`next(batches)`) plus the device step (dispatch until its metrics are ready).
  """
  dataset = coco.load_coco(annotations, images, filter_empty=True)
  mesh = distributed.data_mesh()
  model, optimizer, state = step_lib.create_train_state(config, jax.random.key(seed))
  step = step_lib.jit_train_step(model, optimizer, config.train, mesh)
  state = distributed.replicate(state, mesh)
  key = jax.random.key(seed + 1)
  waits, totals, shapes = [], [], set()
  with pipeline.Batches(dataset, config.data, config.train.batch_size, train=True,
                        seed=seed) as batches:
    while len(totals) < steps:
      whole_step = timing.Stopwatch().start()
      host_batch, waited = timing.time_once(lambda: next(batches))
      shape = host_batch['images'].shape
      state, metrics = step(state, distributed.host_batch_to_global(host_batch, mesh), key)
      jax.block_until_ready(metrics)
      if shape in shapes:  # a new canvas compiled in this step: not timed
        waits.append(waited)
        totals.append(whole_step.stop())
      shapes.add(shape)
  return {'steps': steps, 'canvases': sorted(f'{h}x{w}' for _, h, w, _ in shapes),
          'median_step_s': statistics.median(totals),
          'input_wait_share': sum(waits) / sum(totals),
          'images_per_second': config.train.batch_size * len(totals) / sum(totals)}
