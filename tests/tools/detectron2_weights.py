"""Detection-friendly seeded Detectron2 weights, shared by a recorder and its test (no torch)."""

import numpy as np

SCALED = ('proposal_generator.rpn_head.objectness_logits.weight',
          'proposal_generator.rpn_head.anchor_deltas.weight',
          'roi_heads.box_predictor.bbox_pred.weight',
          'roi_heads.box_predictor.cls_score.weight')
CLASS_BIASES = {0: 2.0, 2: 1.5, 4: 1.0}  # Detectron2 classes (0..K-1); K is background


def friendly(weights: dict) -> dict:
  """Scales the SCALED rows by 0.01 and sets the class biases."""
  weights = dict(weights)
  for key in SCALED:
    weights[key] = (0.1 * weights[key]).astype(np.float32)
  # The narrow heads' features are large: class logits and box deltas need a further
  # 0.1, or boxes collapse to slivers (dw, dh at the clamp).
  for key in SCALED:
    weights[key] *= np.float32(0.1)
  bias = np.zeros_like(weights['roi_heads.box_predictor.cls_score.bias'])
  for label, value in CLASS_BIASES.items():
    bias[label] = value
  weights['roi_heads.box_predictor.cls_score.bias'] = bias
  return weights
