"""Detectron2's mask_rcnn_R_101_FPN_3x: mask_rcnn_R_50_FPN_3x.py with the MSRA ResNet-101."""

import pathlib

from maskrcnn_jax import config as base


def get_config():
  c = base.load_config_file(pathlib.Path(__file__).resolve().parent / 'mask_rcnn_R_50_FPN_3x.py')
  c.model.backbone.depth = 101
  return c
