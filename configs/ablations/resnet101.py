"""Ablation: ResNet-101 backbone instead of the base's (Mask R-CNN paper, Table 2a).

A base that starts from an ImageNet backbone starts from ResNet-101's instead,
converted as configs/maskrcnn_r101_fpn_3x.py says.

The base is the name of a configs/ file (default maskrcnn_r50_fpn_1x), given after a
colon on the command line: --config=configs/ablations/resnet101.py:shapes_demo
"""

import pathlib

from maskrcnn_jax import config as config_lib

_CONFIGS = pathlib.Path(__file__).resolve().parents[1]


def get_config(base: str = 'maskrcnn_r50_fpn_1x'):
  c = config_lib.load_config_file(_CONFIGS / f'{base}.py')
  c.model.backbone.depth = 101
  if c.train.init_checkpoint:  # the base's backbone weights are for another depth
    c.train.init_checkpoint = 'weights/resnet101_imagenet'
  return c
