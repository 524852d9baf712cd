"""Detectron2's COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x, for its model-zoo weights.

Converted with
  python scripts/convert_weights.py --kind detectron2 model_final_a54504.pkl weights/d2_r50_1x
its weights evaluate here as in Detectron2: the MSRA body (stride in the first 1x1 conv),
BGR input with PIXEL_MEAN [103.53, 116.28, 123.675] and PIXEL_STD 1 (held reversed as RGB:
the conversion reverses the stem's input channels), aligned RoIAlign, unrounded anchors
at stride 2**level, ResizeShortestEdge 800 / 1333 with Pillow's bilinear resize, padding to
a multiple of 32 and bilinear mask pasting. Training keys are the default 1x recipe (L1
box losses, shorter side 640..800), on the COCO paths of configs/maskrcnn_r50_fpn_1x.py.

Detectron2's RoIAlign samples adaptively (POOLER_SAMPLING_RATIO 0: ceil(RoI size / bins)
per bin side); here on a static grid of at most 8 samples per bin side, exact for RoIs up
to 56 cells a side in the box head and 112 in the mask head (on their FPN level: beyond
COCO's largest boxes except very elongated ones at level 5).
"""

import pathlib

from maskrcnn_jax import config as base

_CONFIGS = pathlib.Path(__file__).resolve().parents[1]
DETECTRON2_PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)


def get_config():
  c = base.load_config_file(_CONFIGS / 'maskrcnn_r50_fpn_1x.py')
  m = c.model
  m.num_classes = 80  # contiguous COCO classes 1..80 (Detectron2's 0..79, background last)
  m.pixel_mean_rgb = DETECTRON2_PIXEL_MEAN_BGR[::-1]
  m.pixel_std_rgb = (1.0, 1.0, 1.0)
  m.backbone.stride_in_1x1 = True  # MSRA's ResNet (RESNETS.STRIDE_IN_1X1)
  m.backbone.frozen_bn_eps = 1e-5  # Detectron2's FrozenBatchNorm2d
  m.anchors.round_base = False
  m.anchors.stride_from_image = False
  # Detectron2 drops proposals with an empty side (w > 0 and h > 0 kept) before NMS;
  # `sides >= 1e-6` does the same for every box short of a side in (0, 1e-6) px.
  m.rpn.min_box_size = 1e-6
  m.roi_align.aligned = True  # ROIAlignV2
  m.roi_align.sampling_ratio = 0  # POOLER_SAMPLING_RATIO 0: adaptive
  m.roi_align.max_sampling_ratio = 8
  c.data.min_size, c.data.max_size = 800, 1333  # INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST
  c.data.resize_mode = 'shortest_edge'  # ResizeShortestEdge's rounding
  c.data.resize_backend = 'pillow'  # ResizeTransform: Pillow's bilinear on uint8
  c.eval.pad_to_multiple = 32  # SIZE_DIVISIBILITY of the FPN backbone
  # Portraits stay upright (a transposed image is not the same convolution): one square
  # canvas holds any 800 / 1333 resize, as configs/torchvision_r50_fpn.py.
  c.data.image_size, c.data.extra_canvases = (1344, 1344), ()
  c.data.transpose_portrait = False
  c.eval.mask_paste = 'bilinear'
  c.train.init_checkpoint = ''  # the zoo's ImageNet R-50.pkl uses Caffe2 names
  return c
