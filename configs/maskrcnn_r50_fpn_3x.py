"""Mask R-CNN R50-FPN, Detectron2's 3x schedule: 270k iterations, LR drops at 210k, 250k.

Everything else as configs/maskrcnn_r50_fpn_1x.py.
"""

import pathlib

from maskrcnn_jax import config as base


def get_config():
  c = base.load_config_file(pathlib.Path(__file__).resolve().parent / 'maskrcnn_r50_fpn_1x.py')
  c.train.num_steps = 270_000
  c.train.lr_steps = (210_000, 250_000)
  return c
