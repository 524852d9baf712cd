"""Records torchvision's mask pasting for tests/inference/test_paste.py.

Run with the torch venv (not the project venv):
  /work/tvenv/bin/python tests/tools/record_torchvision_paste.py
Writes tests/fixtures/torchvision_paste.npz with, per case i: `mask_probs_i` [M, M]
float32, `box_i` [4] float32 (inside the image, as torchvision's postprocess clips
them), `image_size_i` [2] int (height, width) and `pasted_i` [height, width] bool =
roi_heads.paste_masks_in_image(...) > 0.5.
"""

import pathlib

import numpy as np
import torch
from torch.nn import functional as F
from torchvision.models.detection import roi_heads

OUT = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'torchvision_paste.npz'


def random_probs(rng: np.random.Generator, size: int, smooth: bool) -> np.ndarray:
  """[size, size] float32 probabilities: uniform noise, or a smooth blob-like field."""
  if not smooth:
    return rng.random((size, size), dtype=np.float32)
  coarse = torch.from_numpy(rng.normal(size=(1, 1, 5, 5)).astype(np.float32)) * 4
  fine = F.interpolate(coarse, size=(size, size), mode='bilinear', align_corners=False)
  return torch.sigmoid(fine)[0, 0].numpy()


def main():
  rng = np.random.default_rng(0)
  cases = [  # (height, width, mask size, box or None for a random box)
      (37, 53, 28, None), (37, 53, 28, None), (64, 48, 28, None), (64, 48, 14, None),
      (20, 90, 28, None), (41, 41, 28, [0.0, 0.0, 41.0, 41.0]),
      (41, 41, 28, [0.3, 0.7, 12.6, 9.2]), (50, 60, 28, [30.2, 40.1, 60.0, 50.0]),
      (50, 60, 28, [10.4, 12.2, 10.9, 12.5]), (50, 60, 28, [5.0, 6.0, 25.0, 36.0]),
      (30, 30, 7, [2.5, 3.5, 27.5, 29.0]), (30, 30, 28, [29.2, 0.0, 30.0, 0.4]),
  ]
  arrays = {}
  for i, (height, width, size, box) in enumerate(cases):
    if box is None:
      x = np.sort(rng.uniform(-5, width + 5, 2))
      y = np.sort(rng.uniform(-5, height + 5, 2))
      box = np.clip([x[0], y[0], x[1], y[1]], 0, [width, height, width, height])
    box = np.asarray(box, np.float32)
    probs = random_probs(rng, size, smooth=i % 2 == 0)
    pasted = roi_heads.paste_masks_in_image(
        torch.from_numpy(probs)[None, None], torch.from_numpy(box)[None], (height, width))
    arrays[f'mask_probs_{i}'] = probs
    arrays[f'box_{i}'] = box
    arrays[f'image_size_{i}'] = np.array([height, width])
    arrays[f'pasted_{i}'] = (pasted[0, 0] > 0.5).numpy()
  OUT.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(OUT, **arrays)
  print(f'wrote {len(cases)} cases to {OUT} ({OUT.stat().st_size} bytes)')


if __name__ == '__main__':
  main()
