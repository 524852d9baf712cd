"""Mask R-CNN R50-FPN in the TPU style: 1024 x 1024 square inputs, batch 64, bfloat16.

Each image is scaled so its longer side is 1024 and padded to 1024 x 1024 (one static
shape for the whole run, no scale augmentation). The 1x schedule of
configs/maskrcnn_r50_fpn_1x.py scaled linearly to 4x the batch (Goyal et al. 2017;
Detectron2's auto_scale_workers): LR 0.02 * 64 / 16 = 0.08, and every step count divided
by 4 (22.5k steps, drops at 15k and 20k, 250 warmup steps), so the run sees the same
images at the same points.
"""

import pathlib

from maskrcnn_jax import config as base

_BATCH = 64
_SCALE = _BATCH / 16  # relative to the 1x config's batch


def get_config():
  c = base.load_config_file(pathlib.Path(__file__).resolve().parent / 'maskrcnn_r50_fpn_1x.py')
  c.model.dtype = 'bfloat16'
  d = c.data
  d.resize_mode = 'square'
  d.min_size = 1024  # unused in square mode; kept equal to the side for clarity
  d.max_size = 1024
  d.image_size = (1024, 1024)
  d.extra_canvases = ()  # the one square canvas of the TPU style
  d.transpose_portrait = False
  t = c.train
  t.batch_size = _BATCH
  t.base_lr = 0.02 * _SCALE
  t.num_steps = int(90_000 / _SCALE)
  t.lr_steps = tuple(int(s / _SCALE) for s in (60_000, 80_000))
  t.warmup_steps = int(1000 / _SCALE)
  return c
