"""torchvision's `maskrcnn_resnet50_fpn` at inference, for converted weights.

Mirrors torchvision 0.29 defaults: 91 classes (COCO category ids used directly as
labels), 800/1333 resize (its exact float32 bilinear), ImageNet normalization, RoIAlign
aligned=False with sampling ratio 2, rounded anchors, FrozenBatchNorm eps 0 (torchvision
sets it when it loads its weights), padding to a multiple of 32 and torchvision's mask
pasting.
"""

from maskrcnn_jax import config as base


def get_config():
  c = base.default_config()
  m = c.model
  m.num_classes = 90  # torchvision's 91 outputs include background
  m.backbone.frozen_bn_eps = 0.0  # torchvision calls overwrite_eps(model, 0.0) for its weights
  m.backbone.freeze_at = 2  # trainable_backbone_layers=3: conv1 and layer1 frozen
  m.anchors.round_base = True
  m.anchors.stride_from_image = True
  m.rpn.pre_nms_topk_train = 2000
  m.rpn.post_nms_topk_train = 2000
  m.rpn.min_box_size = 1e-3
  m.rpn.box_loss, m.rpn.smooth_l1_beta = 'smooth_l1', 1.0 / 9.0  # torchvision's losses
  m.rpn.loss_normalizer = 'sampled'  # divided by the anchors sampled
  c.train.weight_decay_norm = c.train.weight_decay  # references/detection/train.py
  m.roi_heads.box_loss, m.roi_heads.smooth_l1_beta = 'smooth_l1', 1.0 / 9.0
  m.roi_align.aligned = False
  m.roi_align.sampling_ratio = 2
  c.data.resize_mode = 'shorter_side'
  c.data.min_size = 800
  c.data.max_size = 1333
  c.data.resize_backend = 'torch'  # torchvision's float32 resize, exactly
  # One square canvas, no transpose: torchvision pads each batch as it comes.
  c.data.image_size = (1344, 1344)
  c.data.extra_canvases = ()
  c.data.transpose_portrait = False
  c.eval.pad_to_multiple = 32
  c.eval.mask_paste = 'torchvision'
  return c
