"""Records 20 Detectron2 training iterations for tests/train/test_trajectory_detectron2.py.

Run with the torch venv and Detectron2's source (not the project venv):
  PYTHONPATH=.:/work/detectron2_src /work/tvenv/bin/python \
      tests/tools/record_detectron2_trajectory.py

The model, weights, images, ground truth and exhaustive samplers of
record_detectron2_losses.py (reduced mask_rcnn_R_50_FPN_1x, nothing random left), trained
as Detectron2's SimpleTrainer trains: `build_optimizer` and `build_lr_scheduler` of its
1x solver config (SGD, momentum 0.9, weight decay 1e-4 on weights and biases,
WEIGHT_DECAY_NORM 0, FREEZE_AT 2: stem and res2 get no gradient), with the schedule
shortened to MAX_ITER iterations (linear warmup from 1/1000 over WARMUP_ITERS, one 10x
decay at STEPS), the same batch of both images at every iteration.

One change to Detectron2: its mask targets (BitMasks.crop_and_resize: RoIAlign of the
full-image mask, adaptive sampling) are replaced by ours from their definition, so that
the trajectory compares the optimization, not the two target rasterizations (their
difference at one step is tests/model/test_losses_detectron2.py's): each gt mask is
cropped to its gt box at CROP_SIZE x CROP_SIZE (a bilinear sample at each bin center,
zeros outside, >= 0.5; data/mask_crops.py), and each RoI's 28 x 28 target samples that
crop bilinearly at the RoI's bin centers (zeros off the crop), >= 0.5
(ops/mask_targets.py), in float32 in the same order.

Stored: the inputs of record_detectron2_losses.py (`seed`, `names`, `shapes`, images, gt)
plus `gt_crops_i` (packbits of [n_i, CROP_SIZE, CROP_SIZE]); the solver settings; per
iteration `lr` [N] and every loss `loss_*` [N]; `final/<name>` each trainable parameter
after the last iteration; `trainable` the names of those parameters.
"""

import pathlib

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler
from detectron2.solver import build_optimizer
from detectron2.structures import BitMasks
from detectron2.structures import Boxes
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from tests.tools import record_detectron2_convert as convert_recorder
from tests.tools import record_detectron2_losses as losses_recorder
from tests.tools import seeded_weights
from tests.tools.detectron2_weights import friendly

OUT = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'detectron2_trajectory.npz'
SEED = losses_recorder.SEED
CROP_SIZE = 112  # data.mask_size of the configs
# Every anchor is a proposal (no top-k cut, no suppression) and every proposal a sampled
# RoI: nothing discrete is left for a 1e-7 difference in the weights to flip.
PRE_NMS_TOPK, POST_NMS_TOPK, NMS_THRESHOLD = 4096, 5120, 1.0  # 5,118 anchors per image
ROI_BATCH_SIZE = 5632
SOLVER = dict(BASE_LR=1e-4, MOMENTUM=0.9, WEIGHT_DECAY=1e-4, WEIGHT_DECAY_NORM=0.0,
              BIAS_LR_FACTOR=1.0, WARMUP_FACTOR=1e-3, WARMUP_ITERS=8, STEPS=(14,),
              GAMMA=0.1, MAX_ITER=20)


def crop_mask(mask: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
  """[size, size] bool: `mask` [H, W] sampled bilinearly at the box's bin centers, >= 0.5."""
  x1, y1, x2, y2 = (float(v) for v in box)
  height, width = mask.shape
  ys = y1 + (np.arange(size) + 0.5) * ((y2 - y1) / size) - 0.5
  xs = x1 + (np.arange(size) + 0.5) * ((x2 - x1) / size) - 0.5
  padded = np.pad(mask.astype(np.float64), 1)  # zeros outside

  def taps(coords, length):
    lower = np.floor(coords)
    frac = coords - lower
    first = lower.astype(np.int64) + 1  # +1: the padding
    return (np.clip(first, 0, length + 1), np.clip(first + 1, 0, length + 1), 1.0 - frac,
            frac)

  r0, r1, wr0, wr1 = taps(ys, height)
  c0, c1, wc0, wc1 = taps(xs, width)
  values = (wr0[:, None] * (wc0 * padded[r0][:, c0] + wc1 * padded[r0][:, c1])
            + wr1[:, None] * (wc0 * padded[r1][:, c0] + wc1 * padded[r1][:, c1]))
  return values >= 0.5


def _axis_weights(roi_lo, roi_hi, gt_lo, gt_hi, crop_size: int, output_size: int):
  """[R, O, S] float32 tent weights from crop cells to RoI bins (ops/mask_targets.py)."""
  gt_len = gt_hi - gt_lo
  safe_len = torch.where(gt_len > 0, gt_len, torch.ones_like(gt_len))
  step = (roi_hi - roi_lo) / safe_len * (crop_size / output_size)
  start = (roi_lo - gt_lo) * (crop_size / safe_len) - 0.5 + 0.5 * step
  coords = start[:, None] + torch.arange(output_size, dtype=torch.float32) * step[:, None]
  weights = torch.clamp(
      1.0 - torch.abs(coords[..., None] - torch.arange(crop_size, dtype=torch.float32)), min=0)
  return torch.where((gt_len > 0)[:, None, None], weights, torch.zeros_like(weights))


class CroppedMasks(BitMasks):
  """BitMasks whose RoI targets are ours: each mask held as its gt box and box crop."""

  def __init__(self, tensor, boxes, crops):
    super().__init__(tensor)
    self.boxes, self.crops = boxes, crops

  def __getitem__(self, item):
    return CroppedMasks(self.tensor[item], self.boxes[item], self.crops[item])

  def to(self, *args, **kwargs):  # GeneralizedRCNN moves the instances to its device
    return CroppedMasks(self.tensor.to(*args, **kwargs), self.boxes, self.crops)

  def crop_and_resize(self, rois: torch.Tensor, mask_size: int) -> torch.Tensor:
    rois, gt = rois.float(), self.boxes.float()
    crop_size = self.crops.shape[-1]
    rows = _axis_weights(rois[:, 1], rois[:, 3], gt[:, 1], gt[:, 3], crop_size, mask_size)
    cols = _axis_weights(rois[:, 0], rois[:, 2], gt[:, 0], gt[:, 2], crop_size, mask_size)
    values = torch.einsum('ril,rjl->rij',
                          torch.einsum('rik,rkl->ril', rows, self.crops.float()), cols)
    return values >= 0.5


def check_exhaustive(model, inputs):
  """Every non-empty proposal (all anchors' boxes, clipped) + gt is a sampled RoI."""
  with torch.no_grad():
    images = model.preprocess_image(inputs)
    features = model.backbone(images.tensor)
    gt = [x['instances'].to('cpu') for x in inputs]
    proposals, _ = model.proposal_generator(images, features, gt)
    sampled = model.roi_heads.label_and_sample_proposals(proposals, gt)
  for p, s, g in zip(proposals, sampled, gt):
    assert len(s) == len(p) + len(g), (len(p), len(s))
    num_fg = int((s.gt_classes < model.roi_heads.num_classes).sum())
    assert num_fg <= ROI_BATCH_SIZE * losses_recorder.ROI_POSITIVE_FRACTION, num_fg
    print('proposals', len(p), 'RoIs', len(s), 'foreground', num_fg)


def main():
  torch.set_num_threads(2)
  cfg, _ = convert_recorder.build('mask_rcnn_R_50_FPN_1x.yaml', groups=1, width_per_group=4)
  cfg.defrost()
  cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = losses_recorder.RPN_BATCH_SIZE
  cfg.MODEL.RPN.POSITIVE_FRACTION = losses_recorder.RPN_POSITIVE_FRACTION
  cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = ROI_BATCH_SIZE
  cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = losses_recorder.ROI_POSITIVE_FRACTION
  cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = PRE_NMS_TOPK
  cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = POST_NMS_TOPK
  cfg.MODEL.RPN.NMS_THRESH = NMS_THRESHOLD
  for key, value in SOLVER.items():
    setattr(cfg.SOLVER, key, value)
  assert cfg.MODEL.BACKBONE.FREEZE_AT == 2 and not cfg.SOLVER.CLIP_GRADIENTS.ENABLED
  model = build_model(cfg).train()
  names_and_shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
  weights = friendly(seeded_weights.seeded_state_dict(names_and_shapes, SEED))
  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
  optimizer = build_optimizer(cfg, model)
  scheduler = build_lr_scheduler(cfg, optimizer)

  rng = np.random.default_rng(SEED + 100)  # record_detectron2_losses.py's ground truth
  arrays = dict(seed=np.array(SEED), names=np.array([n for n, _ in names_and_shapes]),
                shapes=np.array([s + (0,) * (4 - len(s)) for _, s in names_and_shapes]),
                rpn_batch_size=np.array(losses_recorder.RPN_BATCH_SIZE),
                rpn_positive_fraction=np.array(losses_recorder.RPN_POSITIVE_FRACTION),
                roi_batch_size=np.array(ROI_BATCH_SIZE),
                nms_threshold=np.array(NMS_THRESHOLD),
                roi_positive_fraction=np.array(losses_recorder.ROI_POSITIVE_FRACTION),
                pre_nms_topk_train=np.array(cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN),
                post_nms_topk_train=np.array(cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN),
                **{f'solver_{k.lower()}': np.array(v) for k, v in SOLVER.items()})
  inputs = []
  for i, (h, w) in enumerate(losses_recorder.IMAGE_SHAPES):
    rgb = seeded_weights.smooth_image(h, w, seed=20 + i)
    boxes, classes, masks = losses_recorder.ground_truth(i, h, w, rng)
    crops = np.stack([crop_mask(m, b, CROP_SIZE) for m, b in zip(masks, boxes)])
    instances = Instances((h, w), gt_boxes=Boxes(torch.from_numpy(boxes)),
                          gt_classes=torch.from_numpy(classes),
                          gt_masks=CroppedMasks(torch.from_numpy(masks),
                                                torch.from_numpy(boxes),
                                                torch.from_numpy(crops)))
    bgr = np.ascontiguousarray(rgb[..., ::-1].transpose(2, 0, 1)).astype(np.float32)
    inputs.append({'image': torch.from_numpy(bgr), 'instances': instances})
    arrays.update({f'image_{i}': rgb, f'gt_boxes_{i}': boxes, f'gt_classes_{i}': classes,
                   f'gt_masks_{i}': np.packbits(masks), f'gt_crops_{i}': np.packbits(crops)})

  history = {}
  with EventStorage() as storage:
    for iteration in range(cfg.SOLVER.MAX_ITER):  # SimpleTrainer.run_step + LRScheduler
      storage.iter = iteration
      history.setdefault('lr', []).append(optimizer.param_groups[0]['lr'])
      losses = model(inputs)
      for key, value in losses.items():
        history.setdefault(key, []).append(value.item())
      optimizer.zero_grad()
      sum(losses.values()).backward()
      optimizer.step()
      scheduler.step()
      if iteration == 0:
        check_exhaustive(model, inputs)
      print(iteration, f"lr {history['lr'][-1]:.6f}",
            {k: round(v.item(), 5) for k, v in losses.items()})

  trainable = [n for n, p in model.named_parameters() if p.requires_grad]
  arrays.update({k: np.array(v, np.float64) for k, v in history.items()})
  arrays['trainable'] = np.array(trainable)
  state = model.state_dict()
  arrays.update({f'final/{n}': state[n].numpy() for n in trainable})
  np.savez_compressed(OUT, **arrays)
  print(f'{len(trainable)} trainable of {len(list(model.parameters()))} parameters;',
        f'wrote {OUT} ({OUT.stat().st_size} bytes)')


if __name__ == '__main__':
  main()
