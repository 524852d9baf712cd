"""Keypoint R-CNN R50-FPN, Detectron2's `keypoint_rcnn_R_50_FPN_1x` on COCO 2017 person keypoints.

configs/maskrcnn_r50_fpn_1x.py's schedule, resize and canvases (90k iterations at batch
16, LR 0.02, 640..800 / 1333) with Detectron2's Base-Keypoint-RCNN-FPN changes: one class
(person), no mask head, the 17-keypoint head (8 x 512 convs, 56 x 56 heatmaps, loss
normalized by the visible keypoints, weight 1), 1500 post-NMS proposals per training
image and smooth L1 beta 0.5 in the box head. Training and evaluation read the
person_keypoints_*.json files (the person category only, with keypoints); COCOeval
reports bbox and keypoints AP.

Not as Detectron2: its keypoint pooler samples adaptively (POOLER_SAMPLING_RATIO 0) and
it drops training images with fewer than MIN_KEYPOINTS_PER_IMAGE = 1 visible keypoint;
here the keypoint head pools as the other heads (model.roi_align) and only images
without instances are dropped.
"""

import os

from maskrcnn_jax import config as base


def get_config():
  c = base.load_config_file(os.path.join(os.path.dirname(__file__), 'maskrcnn_r50_fpn_1x.py'))
  m = c.model
  m.num_classes = 1
  m.mask_head.enabled = False
  m.keypoint_head.enabled = True
  m.keypoint_head.num_keypoints = 17
  m.keypoint_head.normalize_by_visible = True
  m.keypoint_head.loss_weight = 1.0
  m.rpn.post_nms_topk_train = 1500
  m.roi_heads.box_loss, m.roi_heads.smooth_l1_beta = 'smooth_l1', 0.5
  d = c.data
  d.num_keypoints = 17
  d.train_annotations = 'datasets/coco/annotations/person_keypoints_train2017.json'
  d.val_annotations = 'datasets/coco/annotations/person_keypoints_val2017.json'
  return c
