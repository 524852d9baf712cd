"""Records torchvision.ops.nms / batched_nms outputs for tests/ops/test_nms.py.

Run with the torch venv (not the project venv):
  /work/tvenv/bin/python tests/tools/record_torchvision_nms.py
Writes tests/fixtures/torchvision_nms.npz with, for each case name c:
- `{c}_boxes` [N, 4] float32 x1y1x2y2, `{c}_scores` [N] float32 (distinct, no ties),
  `{c}_classes` [N] int32, `{c}_threshold` [] float32;
- `{c}_keep` [K] int64 = torchvision.ops.nms(boxes, scores, threshold);
- `{c}_batched_keep` [K'] int64 = torchvision.ops.batched_nms(boxes, scores, classes,
  threshold).
"""

import pathlib

import numpy as np
import torch
from torchvision import ops

OUT = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'torchvision_nms.npz'


def uniform_boxes(rng, num_boxes, image_size=200.0):
  """Independent boxes anywhere in the image, sides 2..80 pixels."""
  corners = rng.uniform(0, image_size, size=(num_boxes, 2))
  sides = rng.uniform(2, 80, size=(num_boxes, 2))
  return np.concatenate([corners, corners + sides], axis=1)


def clustered_boxes(rng, num_boxes, num_clusters=6, image_size=200.0):
  """Jittered copies of a few base boxes: many high-IoU pairs, as from a detector."""
  base = uniform_boxes(rng, num_clusters, image_size)
  which = rng.integers(0, num_clusters, size=num_boxes)
  sides = (base[which, 2:] - base[which, :2]).repeat(2, axis=1)
  return base[which] + rng.normal(scale=0.08, size=(num_boxes, 4)) * sides


def main():
  rng = np.random.default_rng(0)
  cases = {
      'uniform': (uniform_boxes(rng, 300), 0.5, 3),
      'clustered': (clustered_boxes(rng, 300), 0.5, 4),
      'clustered_07': (clustered_boxes(rng, 200), 0.7, 2),
      'dense_03': (uniform_boxes(rng, 400, image_size=80.0), 0.3, 5),
  }
  arrays = {}
  for name, (boxes, threshold, num_classes) in cases.items():
    num_boxes = boxes.shape[0]
    boxes = boxes.astype(np.float32)
    scores = rng.permutation(num_boxes).astype(np.float32) / num_boxes + 0.01
    scores = (scores + rng.uniform(0, 1e-4, size=num_boxes)).astype(np.float32)
    assert len(np.unique(scores)) == num_boxes
    classes = rng.integers(1, num_classes + 1, size=num_boxes).astype(np.int32)
    tb, ts, tc = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes)
    arrays[f'{name}_boxes'] = boxes
    arrays[f'{name}_scores'] = scores
    arrays[f'{name}_classes'] = classes
    arrays[f'{name}_threshold'] = np.float32(threshold)
    arrays[f'{name}_keep'] = ops.nms(tb, ts, threshold).numpy()
    arrays[f'{name}_batched_keep'] = ops.batched_nms(tb, ts, tc, threshold).numpy()
    print(name, num_boxes, len(arrays[f'{name}_keep']), len(arrays[f'{name}_batched_keep']))
  OUT.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(OUT, **arrays)
  print(f'wrote {OUT} ({OUT.stat().st_size} bytes)')


if __name__ == '__main__':
  main()
