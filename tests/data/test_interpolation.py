"""data/interpolation.py: torch's bilinear taps, one output size per position."""

import numpy as np

from maskrcnn_jax.data import interpolation


def test_torch_bilinear_taps_with_one_output_size_per_position():
  positions = np.concatenate([np.arange(n) for n in (5, 30, 31, 90)])
  sizes = np.repeat([5, 30, 31, 90], [5, 30, 31, 90])
  taps = interpolation.torch_bilinear_taps(30, positions, sizes)
  for n in (5, 30, 31, 90):
    for batched, alone in zip(taps, interpolation.torch_bilinear_taps(30, np.arange(n), n)):
      np.testing.assert_array_equal(batched[sizes == n], alone)
