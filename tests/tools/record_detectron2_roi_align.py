"""Records Detectron2's adaptive RoIAlign (POOLER_SAMPLING_RATIO 0) for the JAX tests.

Run with the torch venv and Detectron2's source (not the project venv):
  PYTHONPATH=.:/work/detectron2_src /work/tvenv/bin/python tests/tools/record_detectron2_roi_align.py
Writes tests/fixtures/detectron2_roi_align.npz: `features` [H, W, C] float32 (NHWC),
`boxes` [R, 4] float32 image pixels, `spatial_scale`, and for Detectron2's
layers.ROIAlign(sampling_ratio=0) with aligned False / True and output sizes 7 and 14
`align_{aligned}_{size}` [R, size, size, C] float32 (float64 computation).
"""

import pathlib

import numpy as np
import torch
from detectron2.layers import ROIAlign

OUT = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'detectron2_roi_align.npz'
SPATIAL_SCALE = 0.25


def main():
  rng = np.random.default_rng(0)
  features = rng.standard_normal((24, 28, 3)).astype(np.float32)
  # Sides from under a cell to ~30 cells (adaptive grids 0..5 at S = 7), partly outside,
  # empty and degenerate boxes.
  boxes = np.array([[4.3, 6.1, 40.7, 52.4], [0., 0., 112., 96.], [-20., -12., 34.5, 36.],
                    [60., 50., 121.6, 108.], [21.2, 22.1, 23.9, 26.6], [28., 28., 28., 28.],
                    [0., 0., 0., 0.], [83.6, 4., 87.6, 70.], [9., 4., 6., 8.],
                    [1.5, 2.5, 111.5, 20.25]], np.float32)
  x = torch.from_numpy(features).permute(2, 0, 1)[None].double()
  rois = torch.cat([torch.zeros(len(boxes), 1), torch.from_numpy(boxes)], 1).double()
  arrays = dict(features=features, boxes=boxes, spatial_scale=np.array(SPATIAL_SCALE))
  for aligned in (False, True):
    for size in (7, 14):
      op = ROIAlign((size, size), SPATIAL_SCALE, sampling_ratio=0, aligned=aligned)
      with torch.no_grad():
        out = op(x, rois).permute(0, 2, 3, 1).numpy()
      arrays[f'align_{int(aligned)}_{size}'] = out.astype(np.float32)
  np.savez_compressed(OUT, **arrays)
  print(f'wrote {OUT} ({OUT.stat().st_size} bytes)')


if __name__ == '__main__':
  main()
