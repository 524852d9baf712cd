"""Seeded NumPy weights for a torchvision state dict, shared by a recorder and its test.

The torch recorder fills a torchvision module with these arrays and the test rebuilds
the same arrays without torch, so the fixture stores only the names, shapes and seed.
"""

from typing import Sequence

import numpy as np


def seeded_state_dict(names_and_shapes: Sequence[tuple[str, Sequence[int]]],
                      seed: int) -> dict[str, np.ndarray]:
  """float32 arrays by key, drawn in the given order from np.random.default_rng(seed).

  Scales keep activations O(1) through a ResNet + FPN: convs and fcs He-normal, batch
  norm scale in [0.5, 1], running var in [0.5, 2], biases and running means N(0, 0.1^2).
  """
  rng = np.random.default_rng(seed)
  arrays = {}
  for name, shape in names_and_shapes:
    shape = tuple(int(s) for s in shape)
    if len(shape) in (2, 4):  # Linear [out, in], conv [out, in, kh, kw], deconv [in, out, ..]
      value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    elif name.endswith('running_var'):
      value = rng.uniform(0.5, 2.0, shape)
    elif name.endswith('.weight'):  # batch norm scale
      value = rng.uniform(0.5, 1.0, shape)
    elif name.endswith(('.bias', 'running_mean')):
      value = 0.1 * rng.standard_normal(shape)
    else:
      raise ValueError(f'no rule for {name} {shape}')
    arrays[name] = value.astype(np.float32)
  return arrays


# A few classes get a large prior, so that random weights still give detections above
# torchvision's 0.05 score threshold, with distinct biases so scores rarely tie.
DETECTION_CLASS_BIASES = {1: 4.0, 3: 3.5, 18: 3.0}


def detection_friendly(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Scales a seeded maskrcnn_resnet50_fpn state dict so detections exist and are sane.

  Box regressors are shrunk (boxes stay near their anchors/proposals), the class
  logits are dominated by `DETECTION_CLASS_BIASES`, and the RPN objectness logits are
  kept well below ~16.6, where float32 sigmoid rounds to 1.0: torchvision ranks
  proposals by that probability, so saturated logits would tie and leave its order
  (and so its NMS) undefined, while we rank by the logits themselves.
  """
  adjusted = dict(state_dict)
  for key in ('rpn.head.cls_logits.weight', 'rpn.head.bbox_pred.weight',
              'roi_heads.box_predictor.bbox_pred.weight',
              'roi_heads.box_predictor.cls_score.weight'):
    adjusted[key] = (0.1 * state_dict[key]).astype(np.float32)
  bias = np.zeros_like(state_dict['roi_heads.box_predictor.cls_score.bias'])
  for label, value in DETECTION_CLASS_BIASES.items():
    bias[label] = value
  adjusted['roi_heads.box_predictor.cls_score.bias'] = bias
  return adjusted


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
  """[height, width, 3] uint8: low-frequency colour waves and a few flat rectangles."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width].astype(np.float64)
  image = np.zeros((height, width, 3))
  for channel in range(3):
    fy, fx, phase = rng.uniform(0.01, 0.06, 2).tolist() + [rng.uniform(0, 6.3)]
    image[..., channel] = 128 + 100 * np.sin(fy * y + fx * x + phase)
  for _ in range(4):
    y1, x1 = rng.integers(0, height - 20), rng.integers(0, width - 20)
    h, w = rng.integers(16, height // 2), rng.integers(16, width // 2)
    image[y1:y1 + h, x1:x1 + w] = rng.integers(0, 256, 3)
  return np.clip(image, 0, 255).astype(np.uint8)
