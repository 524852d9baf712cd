"""The shapes demo's task in a model Detectron2 builds from its own config keys.

For training side by side with Detectron2 (scripts/detectron2_shapes.py trains its side,
scripts/compare_runs.py draws both; docs/benchmarks.md has the result): Detectron2's R18
(full width: it allows no other for basic blocks) with GroupNorm (RESNETS.NORM 'GN', 32
groups) from scratch, a 32-channel FPN, anchors 8..128, the demo's proposal and sample
counts, a 256-d 2-fc box head and a 2-conv 32-channel mask head, on 128 x 128 images;
Detectron2's conventions as in configs/detectron2/mask_rcnn_R_50_FPN_1x.py (BGR pixel
statistics, unrounded anchors, aligned adaptive RoIAlign, L1 box losses). Both start from
the weights Detectron2 initialises (converted with scripts/convert_weights.py --kind
detectron2) and train 2,000 steps of batch 8 with the same schedule and per-parameter
gradient clipping (SOLVER.CLIP_GRADIENTS 'norm').
"""

from maskrcnn_jax import config as base

_DETECTRON2_PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)


def get_config():
  c = base.load_config_file(__file__.replace('shapes_side_by_side.py', 'shapes_demo.py'))
  m = c.model
  m.pixel_mean_rgb = _DETECTRON2_PIXEL_MEAN_BGR[::-1]
  m.pixel_std_rgb = (1.0, 1.0, 1.0)
  m.backbone.base_width = 64
  m.backbone.group_norm_groups = 32
  m.anchors.round_base = False
  m.anchors.stride_from_image = False
  m.rpn.min_box_size = 1e-6
  m.rpn.box_loss, m.rpn.smooth_l1_beta = 'l1', 0.0
  m.roi_heads.box_loss, m.roi_heads.smooth_l1_beta = 'l1', 0.0
  m.roi_align.aligned = True
  m.roi_align.sampling_ratio = 0
  m.roi_align.max_sampling_ratio = 8
  c.data.train_annotations = 'workdir/side_by_side/shapes/annotations/instances_train.json'
  c.data.train_images = 'workdir/side_by_side/shapes/train'
  c.data.val_annotations = 'workdir/side_by_side/shapes/annotations/instances_val.json'
  c.data.val_images = 'workdir/side_by_side/shapes/val'
  c.eval.mask_paste = 'bilinear'
  t = c.train
  t.batch_size = 8
  t.num_steps = 2000
  t.base_lr = 0.02
  t.warmup_steps = 100
  t.lr_steps = (1500, 1850)
  t.grad_clip_type, t.grad_clip_norm = 'norm', 1.0
  t.init_checkpoint = 'workdir/side_by_side/detectron2_init'
  return c
