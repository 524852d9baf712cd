"""Detectron2's mask_rcnn_R_50_FPN_3x: mask_rcnn_R_50_FPN_1x.py on the 3x schedule.

270k iterations, LR drops at 210k and 250k; evaluation as mask_rcnn_R_50_FPN_1x.py.
"""

import pathlib

from maskrcnn_jax import config as base


def get_config():
  c = base.load_config_file(pathlib.Path(__file__).resolve().parent / 'mask_rcnn_R_50_FPN_1x.py')
  c.train.num_steps = 270_000
  c.train.lr_steps = (210_000, 250_000)
  return c
