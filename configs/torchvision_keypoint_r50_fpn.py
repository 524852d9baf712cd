"""torchvision's `keypointrcnn_resnet50_fpn` at inference, for converted weights.

torchvision's Mask R-CNN conventions (configs/torchvision_r50_fpn.py: 800/1333 with its
exact resize, RoIAlign aligned=False, rounded anchors, FrozenBatchNorm eps 0, padding to
a multiple of 32) with its Keypoint R-CNN heads: one foreground class (person), no mask
head, the 17 COCO keypoints from 8 x 512 convs on 14 x 14 RoIAlign features.
"""

from maskrcnn_jax import config as base


def get_config():
  c = base.load_config_file(__file__.replace('torchvision_keypoint_r50_fpn.py',
                                             'torchvision_r50_fpn.py'))
  m = c.model
  m.num_classes = 1  # torchvision's num_classes=2 includes background
  m.mask_head.enabled = False
  k = m.keypoint_head
  k.enabled = True
  k.num_keypoints = 17
  k.num_convs = 8
  k.conv_dim = 512
  k.pooled_size = 14
  k.heatmap_size = 56
  return c
