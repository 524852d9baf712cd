"""Mask R-CNN R50-FPN, Detectron2's 1x schedule on COCO 2017.

90k iterations at batch 16, LR 0.02 dropped 10x at 60k and 80k, 1000 warmup iterations
from factor 0.001; training shorter side drawn from 640..800 (step 32), 800 at test,
longer side at most 1333; images padded onto four landscape canvases (832 x 1344,
832 x 1088, 832 x 1216, 832 x 832), portraits transposed onto them. These are
`default_config()`'s values; this file adds the COCO paths and the ImageNet backbone to
start from. Paths are relative to the working directory (Detectron2's
`datasets/coco` layout); override them with --config.data.train_annotations=... etc.

The backbone checkpoint is torchvision's ImageNet ResNet-50 converted once with
  python scripts/convert_weights.py --kind resnet resnet50-0676ba61.pth weights/resnet50_imagenet
(--config.train.init_checkpoint='' trains from scratch.)
"""

from maskrcnn_jax import config as base


def get_config():
  c = base.default_config()
  d = c.data
  d.dataset = 'coco'
  d.train_annotations = 'datasets/coco/annotations/instances_train2017.json'
  d.train_images = 'datasets/coco/train2017'
  d.val_annotations = 'datasets/coco/annotations/instances_val2017.json'
  d.val_images = 'datasets/coco/val2017'
  c.train.init_checkpoint = 'weights/resnet50_imagenet'
  return c
