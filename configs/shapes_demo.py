"""A small Mask R-CNN for the built-in synthetic shapes dataset on a CPU.

A half-width ResNet-18 with GroupNorm (trained from scratch: there are no ImageNet
weights to start from, and frozen batch norm would be no normalization at all) and a
32-channel FPN on 128x128 images, with proposal and sample counts scaled down to the
few objects per image and a 2-conv, 32-channel mask head, so that training fits in
minutes on 2 CPU cores. Paths default to where scripts/demo.py writes the
dataset; override them with --config.data.train_annotations=... and so on.
"""

from maskrcnn_jax import config as base


def get_config():
  c = base.default_config()
  m = c.model
  m.num_classes = 4  # circle, square, triangle, star
  m.backbone.depth = 18
  m.backbone.freeze_at = 0  # trained from scratch: nothing to keep frozen
  m.backbone.base_width = 32
  m.backbone.norm = 'group_norm'
  m.backbone.group_norm_groups = 8
  m.fpn.channels = 32
  m.anchors.sizes = (8, 16, 32, 64, 128)
  m.rpn.pre_nms_topk_train = 256
  m.rpn.pre_nms_topk_test = 256
  m.rpn.post_nms_topk_train = 128
  m.rpn.post_nms_topk_test = 64
  m.rpn.batch_size_per_image = 64
  # The smooth L1 box losses the demo's recorded results were trained with.
  m.rpn.box_loss, m.rpn.smooth_l1_beta = 'smooth_l1', 1.0 / 9.0
  m.roi_heads.box_loss, m.roi_heads.smooth_l1_beta = 'smooth_l1', 1.0
  m.roi_heads.batch_size_per_image = 64
  m.roi_heads.detections_per_image = 20
  m.box_head.fc_dim = 256
  m.mask_head.conv_dim = 32
  m.mask_head.num_convs = 2
  d = c.data
  d.dataset = 'shapes'
  d.train_annotations = 'workdir/demo/shapes/annotations/instances_train.json'
  d.train_images = 'workdir/demo/shapes/train'
  d.val_annotations = 'workdir/demo/shapes/annotations/instances_val.json'
  d.val_images = 'workdir/demo/shapes/val'
  d.resize_mode = 'square'
  d.min_size = 128
  d.max_size = 128
  d.image_size = (128, 128)
  d.extra_canvases = ()  # square images: one square canvas
  d.transpose_portrait = False
  d.max_instances = 16
  d.mask_size = 56
  t = c.train
  t.batch_size = 8
  t.num_steps = 2000
  t.base_lr = 0.04
  t.grad_clip_norm = 5.0  # LR 0.05 without clipping diverged by step 30
  t.warmup_steps = 100
  t.lr_steps = (1500, 1850)
  t.checkpoint_every = 500
  t.keep_checkpoints = 2
  t.log_every = 20
  c.eval.batch_size = 8
  return c
