"""The shapes demo with keypoints: Mask R-CNN and a keypoint head together, on a CPU.

`configs/shapes_demo.py` (half-width ResNet-18 with GroupNorm, 32-channel FPN, 128 x 128
images) plus a small keypoint head for the shapes dataset's 4 extreme points
(data/shapes.py `KEYPOINT_NAMES`): 2 x (3x3 conv, 32) on 14 x 14 RoI features (the mask head's size), the 4x4
deconv and 2x upsampling to 56 x 56. `scripts/demo.py --config configs/shapes_keypoint_demo.py`
writes the dataset with keypoints and reports keypoint AP beside box and mask AP.

OKS sigma 0.079 for every keypoint: COCO's shoulder sigma, the middle of its range
(0.025 for eyes to 0.107 for hips); the extreme points are sharp corners, defined about
as well as a shoulder.
"""

import os

from maskrcnn_jax import config as base


def get_config():
  c = base.load_config_file(os.path.join(os.path.dirname(__file__), 'shapes_demo.py'))
  k = c.model.keypoint_head
  k.enabled = True
  k.num_keypoints = 4
  k.num_convs = 2
  k.conv_dim = 32
  # The keypoint loss (ln 3136 = 8 at chance) outweighs the others; at 1.0 it held box
  # AP to 0.544 and keypoint AP to 0.422 after 2,000 steps, at 0.25 they reach 0.631 and
  # 0.519 (README).
  k.loss_weight = 0.25
  c.data.num_keypoints = 4
  c.eval.keypoint_oks_sigmas = (0.079,) * 4
  d = c.data
  d.train_annotations = 'workdir/kp_demo/shapes/annotations/instances_train.json'
  d.train_images = 'workdir/kp_demo/shapes/train'
  d.val_annotations = 'workdir/kp_demo/shapes/annotations/instances_val.json'
  d.val_images = 'workdir/kp_demo/shapes/val'
  return c
