"""References in plain NumPy/Python loops, written from the definitions, the random masks
they are tried on, and how detections are matched to a recorded reference.

Shared by the tests of ops/ (boxes, NMS, mask targets), model/ (rpn, postprocess,
Keypoint R-CNN), data/ (mask crops) and inference/ (paste, the torchvision and
Detectron2 predictors), so that each definition is written once.
"""

import math

import numpy as np


def box_area(box) -> float:
  """Area of one x1y1x2y2 box; negative sides count as 0."""
  return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def box_iou(a, b) -> float:
  """IoU of two boxes; 0 for an empty union."""
  inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
  union = box_area(a) + box_area(b) - inter
  return inter / union if union > 0 else 0.0


def decode_box(delta, reference, weights=(1.0, 1.0, 1.0, 1.0), clamp=math.log(1000.0 / 16)):
  """Box from deltas relative to a reference box (Fast R-CNN parametrization)."""
  wx, wy, ww, wh = weights
  rw, rh = reference[2] - reference[0], reference[3] - reference[1]
  cx = delta[0] / wx * rw + reference[0] + 0.5 * rw
  cy = delta[1] / wy * rh + reference[1] + 0.5 * rh
  w = math.exp(min(delta[2] / ww, clamp)) * rw
  h = math.exp(min(delta[3] / wh, clamp)) * rh
  return [cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h]


def decode_boxes(deltas, references, weights=(1.0, 1.0, 1.0, 1.0),
                 clamp=math.log(1000.0 / 16)) -> np.ndarray:
  """`decode_box` over [N, 4] deltas and references, float64."""
  return np.array([decode_box(d, r, weights, clamp) for d, r in
                   zip(np.asarray(deltas, np.float64), np.asarray(references, np.float64))],
                  np.float64).reshape(-1, 4)


def greedy_nms(boxes, scores, iou_threshold, valid=None, classes=None) -> list[int]:
  """Visit valid boxes by score desc (ties: lower index); keep a box unless a kept box of
  the same class overlaps it with IoU > threshold. Returns the kept indices in order."""
  valid = np.ones(len(scores), bool) if valid is None else valid
  classes = np.zeros(len(scores), int) if classes is None else classes
  order = sorted(np.flatnonzero(valid), key=lambda i: (-scores[i], i))
  kept = []
  for i in order:
    if all(classes[j] != classes[i] or box_iou(boxes[j], boxes[i]) <= iou_threshold
           for j in kept):
      kept.append(i)
  return kept


def bilinear_zero_padded(image, y, x):
  """Reference: bilinear value of `image` at pixel-index point (y, x), zeros outside."""
  y0, x0 = math.floor(y), math.floor(x)
  value = 0.0
  for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
    for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
      if 0 <= yy < image.shape[0] and 0 <= xx < image.shape[1]:
        value += wy * wx * float(image[yy, xx])
  return value


def random_blob_mask(rng, height, width):
  """[height, width] uint8: a union of random discs."""
  yy, xx = np.mgrid[:height, :width] + 0.5
  mask = np.zeros((height, width), bool)
  for _ in range(4):
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    radius = rng.uniform(1, max(height, width, 6) / 3)
    mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2
  return mask.astype(np.uint8)


def match_boxes(ours: np.ndarray, reference: np.ndarray, atol: float) -> np.ndarray:
  """Index into `ours` of the box within `atol` px of each reference box, one to one.

  Both lists are sorted by score; scores equal to ~1e-7 may come in either order (the
  sort of near-ties is not defined), so boxes are matched rather than compared in order.
  """
  distance = np.abs(ours[:, None, :] - reference[None, :, :]).max(-1)
  match = distance.argmin(0)
  assert np.all(distance[match, np.arange(len(reference))] <= atol), (
      f'{np.sum(distance.min(0) > atol)} of {len(reference)} reference boxes have no box '
      f'within {atol} px; distances {distance.min(0)}')
  assert len(set(match.tolist())) == len(match), 'two reference boxes match one of ours'
  return match


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection over union of two boolean masks (1.0 when both are empty)."""
  union = np.logical_or(a, b).sum()
  return 1.0 if union == 0 else np.logical_and(a, b).sum() / union
