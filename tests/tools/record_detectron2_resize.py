"""Records Detectron2's ResizeShortestEdge (sizes and Pillow pixels) for the JAX tests.

Run with the torch venv and Detectron2's source (not the project venv):
  PYTHONPATH=.:/work/detectron2_src /work/tvenv/bin/python tests/tools/record_detectron2_resize.py
Writes tests/fixtures/detectron2_resize.npz: `sizes` [n, 2] original (h, w) and
`resized` [n, 2] Detectron2's output (h, w) at its test setting 800 / 1333; and for a
small setting (short edge SHORT, at most LONG) `image_{i}` [h, w, 3] uint8 RGB inputs and
`pixels_{i}` Detectron2's ResizeTransform output (Pillow bilinear, up and down).
"""

import pathlib

import numpy as np
from detectron2.data import transforms as T

from tests.tools import seeded_weights

OUT = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'detectron2_resize.npz'
SHORT, LONG = 48, 80


def main():
  rng = np.random.default_rng(0)
  sizes = np.concatenate([rng.integers(50, 2000, (200, 2)),
                          [[480, 640], [427, 640], [640, 427], [333, 500], [1, 5000],
                           [800, 1333], [799, 1334], [612, 612]]])
  resize = T.ResizeShortestEdge(800, 1333)
  resized = [resize.get_transform(np.zeros((h, w, 1), np.uint8)) for h, w in sizes]
  arrays = dict(sizes=sizes, resized=np.array([(t.new_h, t.new_w) for t in resized]),
                short=np.array(SHORT), long=np.array(LONG))
  small = T.ResizeShortestEdge(SHORT, LONG)
  for i, (h, w) in enumerate([(31, 45), (97, 130), (130, 61), (48, 48)]):
    image = seeded_weights.smooth_image(h, w, seed=i) if min(h, w) > 40 else \
        rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    arrays[f'image_{i}'] = image
    arrays[f'pixels_{i}'] = small.get_transform(image).apply_image(image)
  np.savez_compressed(OUT, **arrays)
  print(f'wrote {OUT} ({OUT.stat().st_size} bytes)')


if __name__ == '__main__':
  main()
