"""Tests for maskrcnn_jax.ops.anchors against a formula-based loop reference."""

import math

import numpy as np
import pytest

from maskrcnn_jax.ops import anchors as anchor_ops

RATIOS = (0.5, 1.0, 2.0)


def _level_ref(height, width, stride, size, ratios, round_base):
  """Anchor k = (y * W + x) * A + a: base anchor a (ratio = h / w) shifted to the cell."""
  out = []
  for y in range(height):
    for x in range(width):
      for r in ratios:
        half_w, half_h = size / math.sqrt(r) / 2, size * math.sqrt(r) / 2
        if round_base:
          half_w, half_h = round(half_w), round(half_h)  # half to even, as torch.round
        cx, cy = x * stride, y * stride
        out.append([cx - half_w, cy - half_h, cx + half_w, cy + half_h])
  return np.array(out)


def test_torchvision_base_anchors():
  # torchvision AnchorGenerator((32,), (0.5, 1, 2)).cell_anchors, checked by hand once.
  base = anchor_ops.level_anchors(1, 1, 4, 32, RATIOS, round_base=True)
  np.testing.assert_array_equal(base, [[-23, -11, 23, 11], [-16, -16, 16, 16],
                                       [-11, -23, 11, 23]])
  base = anchor_ops.level_anchors(1, 1, 4, 32, RATIOS, round_base=False)
  np.testing.assert_allclose(base[0], [-16 * math.sqrt(2), -8 * math.sqrt(2),
                                       16 * math.sqrt(2), 8 * math.sqrt(2)], rtol=1e-6)


@pytest.mark.parametrize('round_base', [True, False])
@pytest.mark.parametrize('height,width,stride,size,ratios', [
    (3, 5, 4, 32, RATIOS),
    (4, 2, 16, 128, RATIOS),
    (2, 3, 8, 23, (0.3, 1.0, 1.7, 3.0)),
    (1, 4, 64, 512, (1.0,)),
])
def test_level_anchors_match_reference(height, width, stride, size, ratios, round_base):
  got = anchor_ops.level_anchors(height, width, stride, size, ratios, round_base)
  assert got.shape == (height * width * len(ratios), 4) and got.dtype == np.float32
  expected = _level_ref(height, width, stride, size, ratios, round_base)
  if round_base:
    np.testing.assert_array_equal(got, expected)
  else:
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
    # Detectron2: ratio = h / w exactly and area = size**2.
    sides = got[:, 2:] - got[:, :2]
    np.testing.assert_allclose(sides[:, 0] * sides[:, 1], size ** 2, rtol=1e-5)
    np.testing.assert_allclose(sides[:, 1] / sides[:, 0], np.tile(ratios, height * width),
                               rtol=1e-5)


@pytest.mark.parametrize('round_base', [True, False])
def test_fpn_anchors(round_base):
  sizes = (32, 64, 128, 256, 512)
  levels = anchor_ops.fpn_anchors(100, 130, sizes=sizes, aspect_ratios=RATIOS,
                                  round_base=round_base)
  assert len(levels) == 5
  for level, (anchors, size) in enumerate(zip(levels, sizes), start=2):
    height, width = math.ceil(100 / 2 ** level), math.ceil(130 / 2 ** level)
    assert anchors.shape == (height * width * 3, 4)
    np.testing.assert_array_equal(
        anchors, anchor_ops.level_anchors(height, width, 2 ** level, size, RATIOS,
                                          round_base))
  levels = anchor_ops.fpn_anchors(64, 64, min_level=3, max_level=4, sizes=(10, 20),
                                  aspect_ratios=(1.0,))
  assert [a.shape for a in levels] == [(64, 4), (16, 4)]
  with pytest.raises(ValueError):
    anchor_ops.fpn_anchors(64, 64, min_level=2, max_level=6, sizes=(32, 64))


def test_stride_from_image_follows_torchvision_integer_division():
  # A 480 x 320 padded image: P6 is 8 x 5 cells, so torchvision's stride is
  # (480 // 8, 320 // 5) = (60, 64) rather than 64 on both axes.
  plain = anchor_ops.fpn_anchors(480, 320, round_base=True)
  from_image = anchor_ops.fpn_anchors(480, 320, round_base=True, stride_from_image=True)
  for level in range(4):  # P2..P5 divide 480 and 320 exactly: identical anchors
    np.testing.assert_array_equal(plain[level], from_image[level])
  p6 = from_image[4].reshape(8, 5, 3, 4)
  base = p6[0, 0]
  for y, x in ((7, 4), (3, 2)):
    np.testing.assert_array_equal(p6[y, x], base + np.array([64 * x, 60 * y] * 2, np.float32))
