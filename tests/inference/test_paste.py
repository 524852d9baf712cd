"""inference/paste.py: torchvision's paste against its recorded fixture, Detectron2's
against a reference written from the definition, crops pasted back."""


import numpy as np
import pytest

from maskrcnn_jax.data import mask_crops
from maskrcnn_jax.inference import paste
from tests import numpy_reference
from tests.conftest import FIXTURES


def iou(a, b):
  return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


@pytest.mark.parametrize('shape', ['rectangle', 'disc'])
def test_crop_then_paste_round_trip(shape):
  height, width = 90, 120
  mask = np.zeros((height, width), np.uint8)
  if shape == 'rectangle':
    mask[17:61, 23:97] = 1
  else:
    yy, xx = np.mgrid[:height, :width] + 0.5
    mask[(yy - 47.3) ** 2 + (xx - 58.1) ** 2 < 31.0 ** 2] = 1
  rows, cols = np.nonzero(mask)
  box = (cols.min(), rows.min(), cols.max() + 1.0, rows.max() + 1.0)
  crop = mask_crops.crop_and_resize_mask(mask, box, 112)
  pasted = paste.paste_mask(crop.astype(np.float32), box, height, width, method='bilinear')
  assert iou(pasted, mask.astype(bool)) > 0.95


def test_paste_torchvision_matches_recorded_fixture():
  data = np.load(FIXTURES / 'torchvision_paste.npz')
  num_cases = len([key for key in data if key.startswith('box_')])
  assert num_cases >= 10
  for i in range(num_cases):
    height, width = (int(v) for v in data[f'image_size_{i}'])
    out = paste.paste_mask(data[f'mask_probs_{i}'], data[f'box_{i}'], height, width,
                           method='torchvision')
    assert out.shape == (height, width) and out.dtype == bool
    np.testing.assert_array_equal(out, data[f'pasted_{i}'], f'case {i}')


def paste_bilinear_reference(probs, box, height, width):
  """Detectron2's _do_paste_mask over the whole image: pixel centers -> grid_sample."""
  x1, y1, x2, y2 = box
  size = probs.shape[0]
  out = np.zeros((height, width))
  for py in range(height):
    for px in range(width):
      grid_x = (px + 0.5 - x1) / (x2 - x1) * 2 - 1  # [-1, 1] over the box
      grid_y = (py + 0.5 - y1) / (y2 - y1) * 2 - 1
      # grid_sample unnormalization with align_corners=False
      x = ((grid_x + 1) * size - 1) / 2
      y = ((grid_y + 1) * size - 1) / 2
      out[py, px] = numpy_reference.bilinear_zero_padded(probs, y, x)
  return out


def test_paste_bilinear_matches_reference():
  rng = np.random.default_rng(2)
  cases = [((3.2, 4.9, 27.7, 21.3), 28), ((-8.0, -5.5, 12.0, 14.5), 14),
           ((20.5, 10.0, 45.0, 40.0), 28), ((0.0, 0.0, 36.0, 28.0), 14),
           ((11.2, 13.4, 11.9, 13.8), 28), ((2.0, 3.0, 150.0, 120.0), 14),
           ((4.2, 3.1, 30.3, 25.6), 5)]  # big cells: pixels outside the box reach 0.1
  for box, size in cases:
    probs = rng.random((size, size), dtype=np.float32)
    reference = paste_bilinear_reference(probs, box, 28, 36)
    for threshold in (0.5, 0.1):
      out = paste.paste_mask(probs, box, 28, 36, threshold=threshold)
      assert out.shape == (28, 36) and out.dtype == bool
      decided = np.abs(reference - threshold) > 1e-9
      np.testing.assert_array_equal(out[decided], reference[decided] >= threshold, str(box))


@pytest.mark.parametrize('method', ['bilinear', 'torchvision'])
@pytest.mark.parametrize('box', [(40.0, 5.0, 60.0, 15.0), (-30.0, -20.0, -10.0, -5.0),
                                 (32.0, 0.0, 38.0, 20.0), (12.0, 8.0, 4.0, 2.0)])
def test_paste_box_outside_image_or_inverted_is_empty(method, box):
  out = paste.paste_mask(np.ones((28, 28), np.float32), box, 20, 30, method=method)
  assert out.shape == (20, 30) and not out.any()


def test_paste_zero_width_box():
  probs = np.ones((28, 28), np.float32)
  assert not paste.paste_mask(probs, (5.0, 5.0, 5.0, 9.0), 20, 30).any()
  # torchvision resizes to at least one pixel: a one-column line.
  out = paste.paste_mask(probs, (5.0, 5.0, 5.0, 9.0), 20, 30, method='torchvision')
  assert set(np.nonzero(out)[1]) == {5} and 4 <= out.sum() <= 6


def test_paste_taps_of_many_boxes_are_those_of_each_box():
  rng = np.random.default_rng(3)
  lo = rng.uniform(-20, 60, 30)
  hi = lo + np.exp(rng.uniform(-2, 4, 30))
  hi[:3] = lo[:3] - 1.0  # degenerate (torchvision still pastes a pixel)
  hi[3], lo[4] = np.inf, np.nan  # non-finite: nothing
  hi[5] = lo[5] + 27  # torchvision: an integer box of M + 2, the identity resize
  for name, lo_, hi_ in (('bilinear_paste_coords', lo, hi),
                         ('torchvision_paste_taps', lo.astype(np.float32),
                          hi.astype(np.float32))):
    paste_taps = getattr(paste, name)
    with np.errstate(invalid='ignore'):
      start, offsets, *taps = paste_taps(lo_, hi_, 28, 50)
    assert offsets[0] == 0 and not np.diff(offsets)[3:5].any()
    for k in range(30):
      with np.errstate(invalid='ignore'):
        (one_start,), one_offsets, *one_taps = paste_taps(lo_[k:k + 1], hi_[k:k + 1],
                                                          28, 50)
      assert one_offsets[1] == offsets[k + 1] - offsets[k]
      if one_offsets[1]:
        assert one_start == start[k]
      for batched, alone in zip(taps, one_taps):
        np.testing.assert_array_equal(batched[offsets[k]:offsets[k + 1]], alone)
        assert batched.dtype == alone.dtype


def test_paste_bad_inputs_raise():
  with pytest.raises(ValueError, match='method'):
    paste.paste_mask(np.ones((4, 4)), (0, 0, 2, 2), 5, 5, method='nearest')
  with pytest.raises(ValueError, match='expected'):
    paste.paste_mask(np.ones((2, 4, 4)), (0, 0, 2, 2), 5, 5)
