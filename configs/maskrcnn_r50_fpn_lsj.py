"""Mask R-CNN R50-FPN with large-scale jitter instead of multi-scale training.

configs/maskrcnn_r50_fpn_1x.py with the augmentation of Detectron2's new baselines
(`new_baselines/mask_rcnn_R_50_FPN_*_LSJ`) and the TF Model Garden: each training image
is scaled to fit 1024 s x 1024 s, s ~ U(0.1, 2.0), then a random 1024 x 1024 crop is
taken (padded where smaller); evaluation scales the longer side to 1024. One square
canvas, no transpose. The schedule stays the 1x one (the LSJ baselines train 100+
epochs with a larger batch; change train.* for that).
"""

import pathlib

from maskrcnn_jax import config as base


def get_config():
  c = base.load_config_file(pathlib.Path(__file__).resolve().parent / 'maskrcnn_r50_fpn_1x.py')
  d = c.data
  d.large_scale_jitter = True
  d.lsj_scale_range = (0.1, 2.0)
  d.resize_mode = 'square'  # evaluation: longer side 1024 (Detectron2's LSJ test resize)
  d.min_size = 1024  # unused in square mode; kept equal to the side for clarity
  d.max_size = 1024
  d.train_min_sizes = ()  # LSJ draws the scale
  d.image_size = (1024, 1024)
  d.extra_canvases = ()
  d.transpose_portrait = False
  return c
