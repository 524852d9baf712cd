"""The tests' tiny Mask R-CNN: ResNet-18 with narrow heads on 64 x 64 images, for CPU tests.

The data paths are left empty: the caller sets data.train_annotations / train_images
(and val_*), e.g. to a split written by `maskrcnn_jax.data.shapes.write_split`.
"""

from maskrcnn_jax import config as base


def get_config():
  c = base.default_config()
  m = c.model
  m.num_classes = 4
  m.backbone.depth = 18
  m.backbone.freeze_at = 0
  m.fpn.channels = 16
  m.anchors.sizes = (8, 16, 32, 64, 128)
  m.rpn.pre_nms_topk_train = 64
  m.rpn.post_nms_topk_train = 32
  m.rpn.batch_size_per_image = 32
  # The smooth L1 recipe the tests were written against (the default is now L1).
  m.rpn.box_loss, m.rpn.smooth_l1_beta = 'smooth_l1', 1.0 / 9.0
  m.roi_heads.box_loss, m.roi_heads.smooth_l1_beta = 'smooth_l1', 1.0
  m.roi_heads.batch_size_per_image = 16
  m.box_head.fc_dim = 32
  m.mask_head.conv_dim = 8
  m.mask_head.num_convs = 1
  d = c.data
  d.dataset = 'shapes'
  d.resize_mode, d.min_size, d.max_size, d.image_size = 'square', 64, 64, (64, 64)
  d.extra_canvases, d.transpose_portrait = (), False  # one square canvas
  d.max_instances = 8
  d.mask_size = 28
  d.random_flip = False
  d.num_workers = 0  # in the test process; tests/data/test_loader.py covers the workers
  t = c.train
  t.base_lr, t.warmup_steps, t.lr_steps = 0.02, 0, ()
  return c
