"""Mask R-CNN R101-FPN on the 3x schedule (configs/maskrcnn_r50_fpn_3x.py with ResNet-101).

The backbone checkpoint is torchvision's ImageNet ResNet-101 converted with
  python scripts/convert_weights.py --kind resnet resnet101-63fe2227.pth weights/resnet101_imagenet
"""

import pathlib

from maskrcnn_jax import config as base


def get_config():
  c = base.load_config_file(pathlib.Path(__file__).resolve().parent / 'maskrcnn_r50_fpn_3x.py')
  c.model.backbone.depth = 101
  c.train.init_checkpoint = 'weights/resnet101_imagenet'
  return c
