"""Detectron2's mask_rcnn_X_101_32x8d_FPN_3x: ResNeXt-101 32x8d on the 3x schedule.

Its body is FAIR's ResNeXt (converted from Caffe2): 32 groups of 8 channels, the stride in
the 3x3 conv, BGR input with PIXEL_STD [57.375, 57.120, 58.395] (held reversed as RGB).
Everything else as mask_rcnn_R_101_FPN_3x.py.
"""

import pathlib

from maskrcnn_jax import config as base


def get_config():
  c = base.load_config_file(pathlib.Path(__file__).resolve().parent / 'mask_rcnn_R_101_FPN_3x.py')
  b = c.model.backbone
  b.groups, b.width_per_group = 32, 8
  b.stride_in_1x1 = False  # RESNETS.STRIDE_IN_1X1: False for this Caffe2 model
  c.model.pixel_std_rgb = (57.375, 57.120, 58.395)[::-1]
  return c
