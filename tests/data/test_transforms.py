"""Tests of data/transforms.py against torch's recorded resize and plain definitions."""

import numpy as np
import pytest

from maskrcnn_jax.data import transforms
from tests.conftest import FIXTURES


@pytest.fixture(scope='module')
def torch_resize():
  return np.load(FIXTURES / 'torch_resize.npz')


def test_resize_shape_matches_torchvision(torch_resize):
  for (h, w, min_size, max_size), expected in zip(torch_resize['shape_cases'],
                                                  torch_resize['shape_sizes']):
    new_h, new_w, scale = transforms.resize_shape(int(h), int(w), 'shorter_side',
                                                  int(min_size), int(max_size))
    assert (new_h, new_w) == tuple(expected), (h, w)
    assert scale == pytest.approx(min(min_size / min(h, w), max_size / max(h, w)))


def test_resize_shape_square():
  assert transforms.resize_shape(480, 640, 'square', 800, 1024) == (768, 1024, 1.6)
  assert transforms.resize_shape(900, 300, 'square', 800, 1024)[:2] == (1024, 341)
  with pytest.raises(ValueError, match='resize mode'):
    transforms.resize_shape(4, 4, 'bogus', 1, 1)


def test_resize_image_matches_torch(torch_resize):
  i = 0
  while f'image_{i}' in torch_resize:
    nh, nw = torch_resize[f'size_{i}']
    out = transforms.resize_image(torch_resize[f'image_{i}'], int(nh), int(nw))
    assert out.dtype == np.float32 and out.shape == (nh, nw, 3)
    np.testing.assert_allclose(out, torch_resize[f'resized_{i}'], rtol=0, atol=2e-4)
    i += 1
  assert i >= 5


def _reference_resize(image, nh, nw):
  """Half-pixel-center bilinear resize written from the definition, one pixel at a time."""
  h, w = image.shape[:2]
  out = np.zeros((nh, nw, image.shape[2]))
  for i in range(nh):
    y = min(max((i + 0.5) * h / nh - 0.5, 0.0), h - 1)
    y0 = int(y); y1 = min(y0 + 1, h - 1); fy = y - y0
    for j in range(nw):
      x = min(max((j + 0.5) * w / nw - 0.5, 0.0), w - 1)
      x0 = int(x); x1 = min(x0 + 1, w - 1); fx = x - x0
      out[i, j] = ((1 - fy) * ((1 - fx) * image[y0, x0] + fx * image[y0, x1])
                   + fy * ((1 - fx) * image[y1, x0] + fx * image[y1, x1]))
  return out


def test_resize_image_uint8_against_definition():
  image = np.random.default_rng(1).integers(0, 256, (6, 9, 3), dtype=np.uint8)
  for nh, nw in [(6, 9), (12, 18), (3, 4), (10, 5)]:
    out = transforms.resize_image(image, nh, nw)
    np.testing.assert_allclose(out, _reference_resize(image.astype(np.float64), nh, nw),
                               atol=1e-3)


def test_normalize_and_pad():
  image = np.full((2, 3, 3), 255.0, np.float32)
  out = transforms.normalize_image(image, (255.0, 0.0, 5.0), (1.0, 5.0, 10.0))
  np.testing.assert_allclose(out[0, 0], [0.0, 51.0, 25.0])
  padded = transforms.pad_image(out, 4, 5)
  assert padded.shape == (4, 5, 3) and padded.dtype == np.float32
  np.testing.assert_array_equal(padded[:2, :3], out)
  assert not padded[2:].any() and not padded[:, 3:].any()
  with pytest.raises(ValueError, match='does not fit'):
    transforms.pad_image(out, 1, 5)


def test_boxes_follow_image():
  boxes = np.array([[1.0, 2.0, 5.0, 6.0]], np.float32)
  np.testing.assert_allclose(transforms.resize_boxes(boxes, 10, 20, 15, 10),
                             [[0.5, 3.0, 2.5, 9.0]])
  np.testing.assert_allclose(transforms.flip_boxes(boxes, 10.0), [[5.0, 2.0, 9.0, 6.0]])
  image = np.arange(6).reshape(1, 6, 1)
  np.testing.assert_array_equal(transforms.flip_image(image)[0, :, 0], [5, 4, 3, 2, 1, 0])
  # A box over pixels 1..4 covers the mirrored pixels of the flipped image.
  mask = np.zeros((1, 10), bool)
  mask[0, 1:5] = True
  x1, _, x2, _ = transforms.flip_boxes(np.array([[1, 0, 5, 1]]), 10)[0]
  assert transforms.flip_image(mask)[0, int(x1):int(x2)].all()
