"""Records Detectron2's Mask R-CNN parts on seeded weights for tests/convert/test_detectron2_weights.py.

Run with the torch venv and Detectron2's source (not the project venv):
  PYTHONPATH=.:/work/detectron2_src /work/tvenv/bin/python tests/tools/record_detectron2_convert.py

Two reduced models are built from Detectron2's own zoo configs (narrow widths, 5
classes; depth, block counts, groups, stride placement and the rest as in the zoo), filled
with `seeded_weights.seeded_state_dict` values and run in float64 on one RGB image:

  detectron2_r50_fpn: mask_rcnn_R_50_FPN_1x (STRIDE_IN_1X1, BGR, PIXEL_STD 1); its
    weights are also written as a model-zoo style .pkl ({'model': {name: ndarray},
    '__author__': ...}, pickle protocol 2).
  detectron2_x101_fpn: mask_rcnn_X_101_32x8d_FPN_3x with 2 groups of 2 channels
    (stride in the 3x3 conv, BGR, its PIXEL_STD); its weights are also written as a
    DetectionCheckpointer .pth.

  detectron2_r18_gn_fpn: the R50 config at depth 18 with RESNETS.NORM 'GN' (basic
    blocks at Detectron2's only R18 width, RES2_OUT_CHANNELS 64; GroupNorm of 32 groups
    with trained weight and bias), the body of configs/shapes_side_by_side.py.
  `python tests/tools/record_detectron2_convert.py r18_gn` records only that one.
Every head pools with POOLER_SAMPLING_RATIO 2 here (the conversion is under test, not
adaptive sampling). Each .npz holds `seed`, `names` / `shapes` (0-padded) of the state
dict, `config` (the reduced sizes as key=value strings), `image` [H, W, 3] uint8 RGB,
`boxes` [R, 4] float32, and Detectron2's outputs in NHWC and our flattening:
`p2`..`p6` [1, H_l, W_l, C], `objectness_l` [H_l * W_l * A], `deltas_l` [H_l * W_l * A, 4],
`class_logits` [R, K + 1] (background last), `box_deltas` [R, K, 4], `mask_logits`
[R, 28, 28, K]. The x101 file also has `full_names` / `full_shapes` of the unreduced
X101-32x8d model, for a key coverage check.
"""

import pathlib
import pickle
import sys

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes

from tests.tools import seeded_weights

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / 'fixtures'
CONFIGS = pathlib.Path('/work/detectron2_src/configs/COCO-InstanceSegmentation')
SEED = 0
IMAGE_SIZE = (256, 320)  # multiples of 32: no padding, so the FPN sizes are exact
# (x1, y1, x2, y2): sides ~30, 80, 150, 250 and 470 px put them on levels 2, 2, 3, 4, 5.
BOXES = np.array([[10.3, 20.7, 41.1, 49.9], [100.2, 60.5, 181.4, 139.8],
                  [30.6, 90.1, 185.2, 236.3], [40.4, 10.2, 300.9, 250.6],
                  [-60.2, -90.3, 400.5, 380.1], [200.0, 150.5, 236.7, 221.2]], np.float32)

REDUCED = {
    'r50': dict(yaml='mask_rcnn_R_50_FPN_1x.yaml', groups=1, width_per_group=4),
    'x101': dict(yaml='mask_rcnn_X_101_32x8d_FPN_3x.yaml', groups=2, width_per_group=2),
    'r18_gn': dict(yaml='mask_rcnn_R_50_FPN_1x.yaml', groups=1, width_per_group=64,
                   depth=18, norm='GN'),
}


def build(yaml: str, groups: int | None = None, width_per_group: int | None = None,
          reduced: bool = True, depth: int | None = None, norm: str | None = None):
  cfg = get_cfg()
  cfg.merge_from_file(str(CONFIGS / yaml))
  cfg.MODEL.DEVICE = 'cpu'
  if reduced:
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 4
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.NUM_GROUPS = groups
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = width_per_group
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 2
    cfg.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 2
  if depth == 18:  # basic blocks: Detectron2 allows res2 at 64 channels only
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
  if norm is not None:
    cfg.MODEL.RESNETS.NORM = norm
  return cfg, build_model(cfg).eval()


def _names_and_shapes(model):
  return [(k, tuple(v.shape)) for k, v in model.state_dict().items()
          if not k.endswith('num_batches_tracked')]


def _padded(names_and_shapes):
  shapes = np.zeros((len(names_and_shapes), 4), np.int64)
  for i, (_, shape) in enumerate(names_and_shapes):
    shapes[i, :len(shape)] = shape
  return np.array([n for n, _ in names_and_shapes]), shapes


def record(name: str, yaml: str, groups: int, width_per_group: int, **options) -> dict:
  cfg, model = build(yaml, groups, width_per_group, **options)
  names_and_shapes = _names_and_shapes(model)
  weights = seeded_weights.seeded_state_dict(names_and_shapes, SEED)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
  image = seeded_weights.smooth_image(*IMAGE_SIZE, seed=SEED + 1)
  model.double()
  with torch.no_grad():
    bgr = torch.from_numpy(np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1)))
    images = model.preprocess_image([{'image': bgr.double()}])
    assert tuple(images.tensor.shape[-2:]) == IMAGE_SIZE
    features = model.backbone(images.tensor)
    out = {k: v.permute(0, 2, 3, 1).numpy() for k, v in features.items()}
    levels = [features[f] for f in cfg.MODEL.RPN.IN_FEATURES]
    objectness, deltas = model.proposal_generator.rpn_head(levels)
    for level, (o, d) in enumerate(zip(objectness, deltas), start=2):
      n, a, h, w = o.shape
      out[f'objectness_{level}'] = o.permute(0, 2, 3, 1).reshape(-1).numpy()
      out[f'deltas_{level}'] = d.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(-1, 4).numpy()
    boxes = [Boxes(torch.from_numpy(BOXES).double())]
    heads = model.roi_heads
    box_features = heads.box_pooler([features[f] for f in heads.box_in_features], boxes)
    class_logits, box_deltas = heads.box_predictor(heads.box_head(box_features))
    out['class_logits'] = class_logits.numpy()
    out['box_deltas'] = box_deltas.reshape(len(BOXES), -1, 4).numpy()
    mask_features = heads.mask_pooler([features[f] for f in heads.mask_in_features], boxes)
    out['mask_logits'] = heads.mask_head.layers(mask_features).permute(0, 2, 3, 1).numpy()
  names, shapes = _padded(names_and_shapes)
  sizes = dict(groups=groups, width_per_group=width_per_group,
               stem=cfg.MODEL.RESNETS.STEM_OUT_CHANNELS,
               res2_out=cfg.MODEL.RESNETS.RES2_OUT_CHANNELS, norm=cfg.MODEL.RESNETS.NORM,
               depth=cfg.MODEL.RESNETS.DEPTH, stride_in_1x1=cfg.MODEL.RESNETS.STRIDE_IN_1X1,
               fpn=16, fc_dim=32, conv_dim=16, num_classes=5,
               pixel_mean_bgr=tuple(cfg.MODEL.PIXEL_MEAN), pixel_std_bgr=tuple(cfg.MODEL.PIXEL_STD),
               input_format=cfg.INPUT.FORMAT)
  record = dict(seed=SEED, names=names, shapes=shapes, image=image, boxes=BOXES,
                config=np.array([f'{k}={v}' for k, v in sizes.items()]),
                **{k: v.astype(np.float32) for k, v in out.items()})
  model.float()
  return record, model, weights


def main(names=('r50', 'x101', 'r18_gn')):
  FIXTURES.mkdir(exist_ok=True)
  if 'r18_gn' in names:
    r18, _, _ = record('r18_gn', **REDUCED['r18_gn'])
    np.savez_compressed(FIXTURES / 'detectron2_r18_gn_fpn.npz', **r18)
  if 'r50' not in names:
    return
  r50, _, weights = record('r50', **REDUCED['r50'])
  np.savez_compressed(FIXTURES / 'detectron2_r50_fpn.npz', **r50)
  with open(FIXTURES / 'detectron2_r50_fpn.pkl', 'wb') as f:  # the model zoo's layout
    pickle.dump({'model': weights, '__author__': 'maskrcnn-jax recorder, seeded weights'},
                f, protocol=2)

  x101, model, _ = record('x101', **REDUCED['x101'])
  _, full = build(REDUCED['x101']['yaml'], reduced=False)
  x101['full_names'], x101['full_shapes'] = _padded(_names_and_shapes(full))
  np.savez_compressed(FIXTURES / 'detectron2_x101_fpn.npz', **x101)
  DetectionCheckpointer(model, save_dir=str(FIXTURES)).save('detectron2_x101_fpn')
  for path in sorted(FIXTURES.glob('detectron2_*')):
    print(path.name, path.stat().st_size)
  (FIXTURES / 'last_checkpoint').unlink(missing_ok=True)


if __name__ == '__main__':
  main(tuple(sys.argv[1:]) or ('r50', 'x101', 'r18_gn'))
