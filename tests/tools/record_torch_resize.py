"""Records torch's bilinear resize and torchvision's resize sizes for tests/data/test_transforms.py.

Run with the torch venv (not the project venv):
  /work/tvenv/bin/python tests/tools/record_torch_resize.py
Writes tests/fixtures/torch_resize.npz with, per case i: `image_i` [H, W, 3] float32,
`size_i` [2] (new height, new width) and `resized_i` [nh, nw, 3] float32 =
F.interpolate(mode='bilinear', align_corners=False); and `shape_cases` [n, 4]
(height, width, min_size, max_size) with `shape_sizes` [n, 2] = the size
torchvision's GeneralizedRCNNTransform resizes to.
"""

import pathlib

import numpy as np
import torch
from torch.nn import functional as F
from torchvision.models.detection import transform as tv_transform

OUT = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'torch_resize.npz'


def main():
  rng = np.random.default_rng(0)
  cases = [(5, 7, 11, 13), (9, 6, 4, 3), (8, 8, 8, 8), (6, 10, 6, 23), (13, 11, 26, 5),
           (3, 4, 1, 1), (7, 5, 16, 9)]  # (h, w, new h, new w)
  arrays = {}
  for i, (h, w, nh, nw) in enumerate(cases):
    image = (rng.random((h, w, 3)) * 255).astype(np.float32)
    out = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None], size=(nh, nw),
                        mode='bilinear', align_corners=False)
    arrays[f'image_{i}'] = image
    arrays[f'size_{i}'] = np.array([nh, nw])
    arrays[f'resized_{i}'] = out[0].permute(1, 2, 0).numpy()
  shape_cases = [(480, 640, 800, 1333), (427, 640, 800, 1333), (640, 425, 800, 1333),
                 (375, 500, 800, 1333), (200, 1000, 800, 1333), (333, 500, 800, 1333),
                 (612, 612, 800, 1333), (481, 640, 600, 1000), (97, 131, 64, 64)]
  sizes = []
  for h, w, min_size, max_size in shape_cases:
    t = tv_transform.GeneralizedRCNNTransform(min_size, max_size, [0.] * 3, [1.] * 3)
    t.eval()
    image = torch.zeros(3, h, w)
    resized, _ = t.resize(image, None)
    sizes.append(resized.shape[-2:])
  arrays['shape_cases'] = np.array(shape_cases)
  arrays['shape_sizes'] = np.array(sizes)
  OUT.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(OUT, **arrays)
  print(f'wrote {len(cases)} resize cases and {len(shape_cases)} size cases to {OUT}')


if __name__ == '__main__':
  main()
