"""The full configuration tree with Detectron2's R50-FPN defaults.

Every file in `configs/` starts from `default_config()` and changes only what it needs;
the returned ConfigDict is locked, so a misspelled or unknown key is an error rather
than a silently ignored setting.
"""

import importlib.util
import math
import os

import ml_collections

from maskrcnn_jax.train import workdir as workdir_lib

IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)  # ImageNet mean on 0..255 RGB
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)


def default_config() -> ml_collections.ConfigDict:
  """Mask R-CNN R50-FPN as in Detectron2's `mask_rcnn_R_50_FPN_1x`, COCO sized."""
  c = ml_collections.ConfigDict()

  c.model = m = ml_collections.ConfigDict()
  m.num_classes = 80  # K foreground classes; index 0 is background
  m.dtype = 'float32'  # compute dtype: float32 | bfloat16 (params stay float32)
  # The model normalizes its raw 0..255 RGB input: (x - mean) / std (Detectron2's
  # MODEL.PIXEL_MEAN / PIXEL_STD), inside the jitted step so images travel as uint8.
  m.pixel_mean_rgb = IMAGENET_MEAN_RGB
  m.pixel_std_rgb = IMAGENET_STD_RGB

  m.backbone = ml_collections.ConfigDict()
  m.backbone.depth = 50  # 18 | 34 | 50 | 101
  m.backbone.norm = 'frozen_bn'  # frozen_bn | group_norm
  m.backbone.frozen_bn_eps = 1e-5
  m.backbone.group_norm_groups = 32
  m.backbone.freeze_at = 2  # 0: nothing frozen, 1: stem, 2: stem + res2, ... 5: all
  m.backbone.stride_in_1x1 = False  # False: torchvision (v1.5); True: original MSRA
  m.backbone.base_width = 64  # stem / res2 channels; 64 in every ImageNet ResNet
  # ResNeXt: groups of each bottleneck 3x3 conv and their width at base width 64
  # (Detectron2's RESNETS.NUM_GROUPS / WIDTH_PER_GROUP); 1 / 64 is ResNet, 32 / 8 X101.
  m.backbone.groups = 1
  m.backbone.width_per_group = 64

  m.fpn = ml_collections.ConfigDict()
  m.fpn.channels = 256

  m.anchors = ml_collections.ConfigDict()
  m.anchors.sizes = (32, 64, 128, 256, 512)  # one per level P2..P6
  m.anchors.aspect_ratios = (0.5, 1.0, 2.0)  # height / width
  m.anchors.round_base = False  # True: torchvision rounds base anchors to integers
  # True: stride = padded image size // feature size per axis (torchvision), which
  # differs from 2**level only where the padded size is not a multiple of 2**level.
  m.anchors.stride_from_image = False

  m.rpn = ml_collections.ConfigDict()
  m.rpn.pre_nms_topk_train = 2000  # per level
  m.rpn.pre_nms_topk_test = 1000  # per level
  m.rpn.post_nms_topk_train = 1000  # per image, over all levels
  m.rpn.post_nms_topk_test = 1000
  m.rpn.nms_threshold = 0.7
  m.rpn.min_box_size = 0.0  # proposals with a side below this are masked out
  m.rpn.fg_iou_threshold = 0.7
  m.rpn.bg_iou_threshold = 0.3
  m.rpn.batch_size_per_image = 256
  m.rpn.positive_fraction = 0.5
  # The RPN losses' divisor: 'batch_size' (Detectron2) is batch_size_per_image x images,
  # 'sampled' (torchvision) the anchors actually sampled; they differ only when an image
  # has fewer labelled anchors than batch_size_per_image.
  m.rpn.loss_normalizer = 'batch_size'
  # Detectron2's 1x regresses boxes with L1 (SMOOTH_L1_BETA 0.0) in the RPN and the box
  # head; the smooth L1 of Detectron1 / torchvision is configs/ablations/noaug.py's.
  m.rpn.box_loss = 'l1'  # smooth_l1 | l1
  m.rpn.smooth_l1_beta = 0.0  # smooth_l1 only
  m.rpn.box_coder_weights = (1.0, 1.0, 1.0, 1.0)

  m.roi_heads = ml_collections.ConfigDict()
  m.roi_heads.batch_size_per_image = 512
  m.roi_heads.positive_fraction = 0.25
  m.roi_heads.fg_iou_threshold = 0.5
  m.roi_heads.box_loss = 'l1'  # smooth_l1 | l1
  m.roi_heads.smooth_l1_beta = 0.0  # smooth_l1 only
  m.roi_heads.box_coder_weights = (10.0, 10.0, 5.0, 5.0)
  m.roi_heads.score_threshold = 0.05
  m.roi_heads.nms_threshold = 0.5
  m.roi_heads.detections_per_image = 100
  # (proposal, class) candidates entering detection NMS, best first (TF Model Garden's
  # pre_nms_top_k); exact unless fewer than detections_per_image survive among them.
  m.roi_heads.pre_nms_topk = 5000

  m.box_coder_clamp = math.log(1000.0 / 16)  # dw, dh clamp when decoding

  m.roi_op = 'align'  # align | pool
  m.roi_align = ml_collections.ConfigDict()
  m.roi_align.aligned = True  # Detectron2's half-pixel shift; torchvision: False
  # Sample points per bin side: N > 0 static; 0 adaptive, ceil(RoI size / bins) per bin
  # side as Detectron2's POOLER_SAMPLING_RATIO 0 (configs/detectron2/*), on a static
  # max_sampling_ratio grid with the unused samples masked: exact for RoIs up to
  # max_sampling_ratio * bins cells a side (ops/roi_align.py).
  m.roi_align.sampling_ratio = 2
  m.roi_align.max_sampling_ratio = 8
  m.roi_pool = ml_collections.ConfigDict()
  m.roi_pool.max_bin_cells = 8  # RoIPool is exact for bins up to this many cells a side

  m.box_head = ml_collections.ConfigDict()
  m.box_head.pooled_size = 7
  m.box_head.fc_dim = 1024

  m.mask_head = ml_collections.ConfigDict()
  m.mask_head.pooled_size = 14
  m.mask_head.conv_dim = 256
  m.mask_head.num_convs = 4
  m.mask_head.resolution = 28
  m.mask_head.enabled = True  # False: no mask head, masks or mask loss (Keypoint R-CNN)

  # Keypoint head (the paper's section 5, torchvision's / Detectron2's Keypoint R-CNN):
  # 8 x (3x3 conv, 512) on 14 x 14 RoI features, a 4x4 stride-2 deconv to K channels and
  # 2x bilinear upsampling to 56 x 56 logits, one softmax over the cells per keypoint.
  m.keypoint_head = ml_collections.ConfigDict()
  m.keypoint_head.enabled = False  # off: outputs, losses and variables as without it
  m.keypoint_head.num_keypoints = 17  # K (COCO person)
  m.keypoint_head.num_convs = 8
  m.keypoint_head.conv_dim = 512
  m.keypoint_head.pooled_size = 14
  m.keypoint_head.heatmap_size = 56  # 4 x pooled_size: the deconv and the upsampling
  # Training runs the head on the sampled foreground prefix (as the mask head), at most
  # roi_heads.batch_size_per_image * positive_fraction RoIs per image.
  # True: loss = sum over visible keypoints / their number in the batch (Detectron2's
  # NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS, torchvision's mean); False: / (images x
  # foreground RoIs per image x K), Detectron2's fixed normalizer.
  m.keypoint_head.normalize_by_visible = True
  m.keypoint_head.loss_weight = 1.0

  m.mask_loss = 'sigmoid'  # sigmoid | softmax
  m.class_agnostic_mask = False

  c.data = d = ml_collections.ConfigDict()
  d.dataset = 'coco'  # 'coco' (annotation file + image folder) | 'tfds' | 'shapes'
  d.train_annotations = ''
  d.train_images = ''
  d.val_annotations = ''
  d.val_images = ''
  d.tfds_name = ''
  d.tfds_data_dir = ''
  d.tfds_train_split = 'train'  # splits of the prepared coco_instances (data/tfds_coco.py)
  d.tfds_val_split = 'val'
  # shorter_side (torchvision's floor rounding) | shortest_edge (Detectron2's
  # ResizeShortestEdge: sides rounded to nearest) | square (TPU style)
  d.resize_mode = 'shorter_side'
  d.min_size = 800  # shorter side target (shorter_side mode; evaluation and Predictor)
  # Training shorter sides, one drawn per image (shorter_side mode; Detectron2's
  # MIN_SIZE_TRAIN with 'choice' sampling); () trains at min_size.
  d.train_min_sizes = (640, 672, 704, 736, 768, 800)
  d.max_size = 1333  # longer side cap (shorter_side mode); square side (square mode)
  # How pixels are resized, in the pipeline and the Predictor alike: 'opencv' (bilinear
  # on uint8, images travel as uint8) | 'torch' (torchvision's exact float32 resize,
  # images travel as float32: 4x the bytes; configs/torchvision_r50_fpn.py).
  # 'pillow': Pillow's bilinear on uint8, Detectron2's ResizeTransform (configs/detectron2).
  d.resize_backend = 'opencv'
  # The main (largest) landscape canvas, (height, width), multiples of 64: every image
  # fits it. 832 x 1344 holds any 800 / 1333 resize once portraits are transposed.
  d.image_size = (832, 1344)
  # Smaller landscape canvases (h, w), multiples of 64, each inside image_size; each image
  # goes onto the smallest one holding its largest resize (transforms.choose_canvas).
  # At most 4 canvases in all, so at most 4 compiled shapes. Sized for COCO's 4:3 and
  # 3:2 photos and squares at 800 / 1333.
  d.extra_canvases = ((832, 1088), (832, 1216), (832, 832))
  d.transpose_portrait = True  # portrait images lie transposed on the landscape canvases
  # Large-scale jitter (Ghiasi et al. 2021; Detectron2's new baselines, TF Model Garden):
  # training resizes each image to fit image_size * s, s ~ U(lsj_scale_range), then takes
  # a random image_size crop (padded where smaller). Needs one canvas and no transpose;
  # evaluation uses resize_mode.
  d.large_scale_jitter = False
  d.lsj_scale_range = (0.1, 2.0)
  d.max_instances = 100
  d.mask_size = 112  # ground-truth masks cropped to their box, resized to this
  # K > 0: batches carry gt_keypoints [B, N, K, 3] (the dataset's K keypoints; the
  # keypoint head's model.keypoint_head.num_keypoints). 0: no keypoints read.
  d.num_keypoints = 0
  d.random_flip = True
  d.filter_empty_train = True  # drop training images without (non-crowd) instances
  # With keypoints (num_keypoints > 0): drop training images with fewer labelled
  # (visibility > 0) keypoints, all instances together (Detectron2's
  # MIN_KEYPOINTS_PER_IMAGE, 1); 0 keeps them. Evaluation keeps every image.
  d.min_train_keypoints = 1
  # A training image that is missing or cannot be decoded (or its masks): 'skip' puts
  # the next readable image of the same step in its slot, with a warning naming it once
  # and a count in the log; 'fail' stops the run naming it. Evaluation always stops (a
  # skip would change AP).
  d.corrupt_images = 'skip'
  d.num_workers = 2  # grain worker processes preparing batches; 0: in the main process
  d.prefetch = 2  # batches prepared ahead

  c.train = t = ml_collections.ConfigDict()
  t.batch_size = 16  # global, over all hosts and devices
  t.num_steps = 90_000
  t.base_lr = 0.02
  t.momentum = 0.9
  t.weight_decay = 1e-4
  # Of normalization scales and biases (GroupNorm): 0 as Detectron2's WEIGHT_DECAY_NORM;
  # torchvision's reference recipe decays them as everything else.
  t.weight_decay_norm = 0.0
  t.warmup_steps = 1000
  t.warmup_factor = 1e-3
  t.lr_steps = (60_000, 80_000)
  t.lr_decay = 0.1
  t.grad_clip_norm = 0.0  # the clipping threshold; 0 disables clipping
  # Detectron2's CLIP_TYPE: 'full_model' bounds the norm of all trained gradients
  # together, 'norm' each parameter's gradient on its own, 'value' each element.
  t.grad_clip_type = 'full_model'
  t.checkpoint_every = 5000
  t.keep_checkpoints = 3
  t.log_every = 20
  t.eval_every = 0  # 0: only at the end
  t.seed = 0
  t.init_checkpoint = ''  # a converted backbone or full checkpoint to start from

  c.eval = e = ml_collections.ConfigDict()
  e.batch_size = 8
  e.mask_threshold = 0.5
  # Predictor padding: 0 pads every image to data.image_size (one compilation); N > 0
  # pads each resized image to a multiple of N (one compilation per padded shape), as
  # torchvision's GeneralizedRCNNTransform does with 32.
  e.pad_to_multiple = 0
  e.mask_paste = 'bilinear'  # bilinear (Detectron2) | torchvision
  # COCOeval engine: faster_coco_eval (C++) | pycocotools (the reference; same tables).
  e.engine = 'faster_coco_eval'
  # Processes pasting and RLE-encoding masks beside the devices (spawned): -1 one per
  # core (at most 8), 0 none (threads of the main process).
  e.host_workers = -1
  # bbox and segm COCOevals at once: -1 one process per iou type (at most one per core;
  # the first in this process, the others spawned), 1 one after the other.
  e.coco_eval_workers = -1
  # COCOeval's per-keypoint OKS sigmas; () takes COCO's 17 person sigmas (K must be 17).
  e.keypoint_oks_sigmas = ()
  # Val images drawn with their predictions into TensorBoard at each evaluation of a
  # training run (the first N of the val split); 0 draws none.
  e.tensorboard_images = 4

  c.lock()
  return c


def get_config() -> ml_collections.ConfigDict:
  """`default_config()`: this file is itself a config file, the scripts' --config default.

  ml_collections defines the `--config.<key>` override flags from the default's keys, so
  scripts reading a run's saved config accept overrides without --config.
  """
  return default_config()


def load_config_file(path: str | os.PathLike, arg: str | None = None
                     ) -> ml_collections.ConfigDict:
  """`get_config(arg)` (or `get_config()` when `arg` is None) of the config file `path`.

  Lets one config file start from another (configs/ablations/* from a base config), as
  `--config=path:arg` on the command line does through ml_collections' config_flags.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file not found: {path}')
  name = 'config_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  get_config = getattr(module, 'get_config', None)
  if not callable(get_config):
    raise AttributeError(f'config file {path} defines no get_config()')
  return get_config() if arg is None else get_config(arg)


def load_run_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config a training run saved, from its workdir or any checkpoint path inside it.

  `path` is what scripts' --checkpoint takes of a run: the workdir, its checkpoints
  folder or one step. Keys newer than the run keep this version's defaults.
  """
  run = workdir_lib.find_run(os.fspath(path))
  if run is None:
    raise FileNotFoundError(f'{path} is not in a training run (no '
                            f'{workdir_lib.CONFIG_FILE} beside its checkpoints folder)')
  return workdir_lib.load_run_config(run, default_config())
