"""Records torchvision RoIAlign / RoIPool outputs for tests/ops/test_roi_align.py.

Run with the torch venv (not the project venv):
  /work/tvenv/bin/python tests/tools/record_torchvision_roi_align.py
Writes tests/fixtures/torchvision_roi_align.npz with (all NHWC, float32):
- `features` [H, W, C], `boxes` [R, 4] image pixels, `spatial_scale` [] for one level;
  `align_{aligned}_{sampling_ratio}` [R, S, S, C] = torchvision.ops.roi_align for aligned in
  (0, 1) and sampling ratios (1, 2, 4); `pool` [R, S, S, C] = torchvision.ops.roi_pool.
- `ml_features_{l}` [B, H_l, W_l, C] for levels 2..5, `ml_boxes` [B, R, 4],
  `ml_image_size` [2] (h, w) and `ml_align` [B, R, S, S, C] = MultiScaleRoIAlign(
  ['0', '1', '2', '3'], S, sampling_ratio=2) (aligned=False).
"""

import collections
import pathlib

import numpy as np
import torch
from torchvision import ops

OUT = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'torchvision_roi_align.npz'
OUTPUT_SIZE = 4


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, -3)))


def nhwc(x):
  return np.moveaxis(x.numpy(), -3, -1).astype(np.float32)


def main():
  rng = np.random.default_rng(0)
  arrays = {}
  height, width, channels, scale = 10, 12, 3, 0.5
  features = rng.normal(size=(height, width, channels)).astype(np.float32)
  # Image is 20 x 24 pixels: interior, border, partly outside, sub-cell, zero-area, padding.
  boxes = np.array([[2.3, 3.1, 15.7, 12.4], [0., 0., 24., 20.], [-6., -3., 8.5, 9.],
                    [18., 14., 30., 27.], [5.2, 6.1, 5.9, 6.6], [7., 7., 7., 7.],
                    [0., 0., 0., 0.], [21.9, 1., 23.9, 19.5], [3., 17.5, 20., 19.9]],
                   np.float32)
  rois = torch.cat([torch.zeros(len(boxes), 1), torch.from_numpy(boxes)], dim=1)
  arrays.update(features=features, boxes=boxes, spatial_scale=np.float32(scale))
  for aligned in (0, 1):
    for ratio in (1, 2, 4):
      out = ops.roi_align(nchw(features)[None], rois, OUTPUT_SIZE, scale, ratio, bool(aligned))
      arrays[f'align_{aligned}_{ratio}'] = nhwc(out)
  arrays['pool'] = nhwc(ops.roi_pool(nchw(features)[None], rois, OUTPUT_SIZE, scale))

  batch, image_h, image_w = 2, 256, 320
  levels = [rng.normal(size=(batch, image_h >> l, image_w >> l, 2)).astype(np.float32)
            for l in range(2, 6)]
  # Side lengths chosen to land on levels 2, 3, 4, 5 (canonical 224 at level 4).
  ml_boxes = np.array([
      [[10., 12., 50., 60.], [30., 20., 190., 150.], [0., 0., 320., 256.],
       [-100., -80., 420., 400.], [0., 0., 0., 0.], [100., 40., 130., 250.]],
      [[200., 100., 310., 250.], [5., 5., 9., 8.], [40., 30., 300., 240.],
       [12., 200., 90., 255.], [0., 0., 0., 0.], [-50., -60., 600., 500.]]], np.float32)
  pooler = ops.MultiScaleRoIAlign(['0', '1', '2', '3'], OUTPUT_SIZE, sampling_ratio=2)
  x = collections.OrderedDict((str(i), nchw(f)) for i, f in enumerate(levels))
  out = pooler(x, [torch.from_numpy(b) for b in ml_boxes], [(image_h, image_w)] * batch)
  arrays['ml_align'] = nhwc(out).reshape(batch, -1, OUTPUT_SIZE, OUTPUT_SIZE, 2)
  arrays.update({f'ml_features_{l}': f for l, f in zip(range(2, 6), levels)})
  arrays.update(ml_boxes=ml_boxes, ml_image_size=np.array([image_h, image_w]))
  np.savez_compressed(OUT, **arrays)
  print(f'wrote {OUT} ({OUT.stat().st_size} bytes)')


if __name__ == '__main__':
  main()
