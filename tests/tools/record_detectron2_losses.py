"""Records Detectron2's Mask R-CNN training losses for tests/model/test_losses_detectron2.py.

Run with the torch venv and Detectron2's source (not the project venv):
  PYTHONPATH=.:/work/detectron2_src /work/tvenv/bin/python tests/tools/record_detectron2_losses.py

The reduced mask_rcnn_R_50_FPN_1x of record_detectron2_convert.py (narrow widths, 5
classes, POOLER_SAMPLING_RATIO 2) with the detection-friendly seeded weights of the
predictor test, in training mode and float32, on two images that need no resize: 128 x 160
and 117 x 150 (ImageList pads the second onto the first's 128 x 160, a multiple of 32).
Ground truth: a few instances per image, each a rasterized ellipse or polygon given to
Detectron2 as BitMasks (full-image bool masks: its mask targets are then RoIAlign of
the mask, the closest to our bilinear crop-and-resize; polygons would be rasterized
inside each RoI instead), with its box the mask's pixel extent widened by < 0.5 px.

Sampling is made deterministic by size: RPN.BATCH_SIZE_PER_IMAGE 16384 (positive
fraction 0.5) exceeds twice the 5,118 anchors of an image, and ROI_HEADS 2048 at 0.25
keeps every negative of the <= 1000 + gt candidates; main() checks that the positive RoIs
also fit (<= 512). Detectron2 normalizes both RPN losses by BATCH_SIZE_PER_IMAGE x images
(`rpn_normalizer`), not by the number of labelled anchors (`rpn_num_pos`, `rpn_num_neg`
per image), so the test rescales them; the box-head losses are over all sampled RoIs.

Stored: `seed`, `names` / `shapes` (0-padded) of the state dict; the sampling settings;
per image i `image_i` [H_i, W_i, 3] uint8 RGB, `gt_boxes_i` [n_i, 4] float32,
`gt_classes_i` [n_i] (Detectron2's 0..K-1), `gt_masks_i` (packbits of [n_i, H_i, W_i]);
the losses `loss_rpn_cls`, `loss_rpn_loc`, `loss_cls`, `loss_box_reg`, `loss_mask`;
`num_fg`, `num_bg` [2] sampled RoIs per image; and Detectron2's mask targets for its
foreground RoIs (all images): `mask_rois` [F, 4], `mask_image` [F], `mask_classes` [F]
(0..K-1), `mask_gt` [F] (the matched gt within the image) and `mask_targets` (packbits
of [F, 28, 28] bool).
"""

import pathlib

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals
from detectron2.structures import BitMasks
from detectron2.structures import Boxes
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from tests.tools import record_detectron2_convert as convert_recorder
from tests.tools import seeded_weights
from tests.tools.detectron2_weights import friendly

OUT = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'detectron2_losses.npz'
SEED = 0
RPN_BATCH_SIZE, RPN_POSITIVE_FRACTION = 16384, 0.5
ROI_BATCH_SIZE, ROI_POSITIVE_FRACTION = 2048, 0.25
IMAGE_SHAPES = ((128, 160), (117, 150))
# Per image: (class, kind, parameters); ellipses (cy, cx, ry, rx), polygons [(x, y), ...].
INSTANCES = (
    ((0, 'ellipse', (40, 45, 18, 26)),
     (2, 'polygon', ((95, 15), (150, 40), (110, 95))),
     (4, 'ellipse', (100, 30, 6, 8)),
     (1, 'ellipse', (70, 85, 50, 68))),
    ((3, 'ellipse', (30, 110, 20, 30)),
     (0, 'polygon', ((10, 60), (60, 50), (70, 105), (20, 110))),
     (2, 'ellipse', (85, 120, 9, 12))),
)


def rasterize(kind: str, params, height: int, width: int) -> np.ndarray:
  """[height, width] bool: pixel centers inside the ellipse or convex polygon."""
  y, x = np.mgrid[0:height, 0:width] + 0.5
  if kind == 'ellipse':
    cy, cx, ry, rx = params
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
  inside = np.ones((height, width), bool)
  points = np.asarray(params, np.float64)
  for (x1, y1), (x2, y2) in zip(points, np.roll(points, -1, axis=0)):
    inside &= (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) >= 0  # clockwise in image axes
  return inside


def ground_truth(index: int, height: int, width: int, rng) -> tuple:
  """(boxes [n, 4] float32, classes [n] int64, masks [n, H, W] bool) of image `index`."""
  boxes, classes, masks = [], [], []
  for label, kind, params in INSTANCES[index]:
    mask = rasterize(kind, params, height, width)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    # Off the border: Detectron2's RoIAlign repeats edge pixels, our crop reads zeros.
    assert 0 < rows[0] and rows[-1] < height - 1 and 0 < cols[0] and cols[-1] < width - 1
    margin = rng.uniform(0.0, 0.5, 4)
    boxes.append([cols[0] - margin[0], rows[0] - margin[1], cols[-1] + 1 + margin[2],
                  rows[-1] + 1 + margin[3]])
    classes.append(label)
    masks.append(mask)
  return np.array(boxes, np.float32), np.array(classes, np.int64), np.stack(masks)


def _gt_index(matched_boxes, gt_boxes) -> np.ndarray:
  """[F] index of each RoI's matched gt box among the image's gt boxes."""
  equal = (matched_boxes[:, None] == gt_boxes[None]).all(-1).numpy()
  assert np.all(equal.sum(1) == 1)
  return equal.argmax(1)


def main():
  cfg, _ = convert_recorder.build('mask_rcnn_R_50_FPN_1x.yaml', groups=1, width_per_group=4)
  cfg.defrost()
  cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = RPN_BATCH_SIZE
  cfg.MODEL.RPN.POSITIVE_FRACTION = RPN_POSITIVE_FRACTION
  cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = ROI_BATCH_SIZE
  cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = ROI_POSITIVE_FRACTION
  model = build_model(cfg).train()
  names_and_shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
  weights = friendly(seeded_weights.seeded_state_dict(names_and_shapes, SEED))
  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})

  rng = np.random.default_rng(SEED + 100)
  arrays = dict(seed=np.array(SEED), names=np.array([n for n, _ in names_and_shapes]),
                shapes=np.array([s + (0,) * (4 - len(s)) for _, s in names_and_shapes]),
                rpn_batch_size=np.array(RPN_BATCH_SIZE),
                rpn_positive_fraction=np.array(RPN_POSITIVE_FRACTION),
                roi_batch_size=np.array(ROI_BATCH_SIZE),
                roi_positive_fraction=np.array(ROI_POSITIVE_FRACTION),
                pre_nms_topk_train=np.array(cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN),
                post_nms_topk_train=np.array(cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN))
  inputs = []
  for i, (h, w) in enumerate(IMAGE_SHAPES):
    rgb = seeded_weights.smooth_image(h, w, seed=20 + i)
    boxes, classes, masks = ground_truth(i, h, w, rng)
    instances = Instances((h, w), gt_boxes=Boxes(torch.from_numpy(boxes)),
                          gt_classes=torch.from_numpy(classes),
                          gt_masks=BitMasks(torch.from_numpy(masks)))
    bgr = np.ascontiguousarray(rgb[..., ::-1].transpose(2, 0, 1)).astype(np.float32)
    inputs.append({'image': torch.from_numpy(bgr), 'instances': instances})
    arrays.update({f'image_{i}': rgb, f'gt_boxes_{i}': boxes, f'gt_classes_{i}': classes,
                   f'gt_masks_{i}': np.packbits(masks)})

  with torch.no_grad(), EventStorage():
    torch.manual_seed(SEED)
    losses = model(inputs)  # GeneralizedRCNN's own training forward
    # The same steps again, to read what the losses were computed from.
    images = model.preprocess_image(inputs)
    assert tuple(images.tensor.shape[-2:]) == IMAGE_SHAPES[0]
    features = model.backbone(images.tensor)
    gt = [x['instances'] for x in inputs]
    rpn = model.proposal_generator
    anchors = rpn.anchor_generator([features[f] for f in rpn.in_features])
    labels, _ = rpn.label_and_sample_anchors(anchors, gt)
    proposals, _ = rpn(images, features, gt)
    heads = model.roi_heads
    sampled = heads.label_and_sample_proposals(proposals, gt)
    foreground, _ = select_foreground_proposals(sampled, heads.num_classes)

  num_fg = np.array([len(f) for f in foreground])
  num_bg = np.array([len(s) for s in sampled]) - num_fg
  for i, (p, s) in enumerate(zip(proposals, sampled)):
    # Deterministic sampling: every candidate (proposals + gt) is a sampled RoI.
    assert len(s) == len(p) + len(gt[i]), (i, len(s), len(p))
  assert num_fg.max() <= int(ROI_BATCH_SIZE * ROI_POSITIVE_FRACTION), num_fg
  num_anchors = sum(len(a) for a in anchors)
  assert num_anchors <= RPN_BATCH_SIZE * min(RPN_POSITIVE_FRACTION, 1 - RPN_POSITIVE_FRACTION)
  arrays.update(
      rpn_normalizer=np.array(RPN_BATCH_SIZE * len(inputs)),
      rpn_num_pos=np.array([int((l == 1).sum()) for l in labels]),
      rpn_num_neg=np.array([int((l == 0).sum()) for l in labels]),
      num_proposals=np.array([len(p) for p in proposals]), num_fg=num_fg, num_bg=num_bg,
      mask_rois=torch.cat([f.proposal_boxes.tensor for f in foreground]).numpy(),
      mask_image=np.concatenate([np.full(len(f), i) for i, f in enumerate(foreground)]),
      mask_classes=torch.cat([f.gt_classes for f in foreground]).numpy(),
      mask_gt=np.concatenate([_gt_index(f.gt_boxes.tensor, g.gt_boxes.tensor)
                              for f, g in zip(foreground, gt)]),
      mask_targets=np.packbits(torch.cat([
          f.gt_masks.crop_and_resize(f.proposal_boxes.tensor, 28) for f in foreground]).numpy()),
      **{k: np.array(v.item(), np.float64) for k, v in losses.items()})
  np.savez_compressed(OUT, **arrays)
  print({k: round(v.item(), 6) for k, v in losses.items()})
  print('anchors', num_anchors, 'labelled +/-', arrays['rpn_num_pos'], arrays['rpn_num_neg'],
        'proposals', arrays['num_proposals'], 'fg', num_fg, 'bg', num_bg)
  print(f'wrote {OUT} ({OUT.stat().st_size} bytes)')


if __name__ == '__main__':
  main()
