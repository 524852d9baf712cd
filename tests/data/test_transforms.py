"""Tests of data/transforms.py against torch's recorded resize and plain definitions."""

import numpy as np
import pytest

from maskrcnn_jax.config import default_config
from maskrcnn_jax.data import transforms
from tests.conftest import FIXTURES


def _data_config(**overrides):
  c = default_config().data
  c.unlock()
  c.update(overrides)
  return c


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


def test_pad():
  image = np.arange(18, dtype=np.float32).reshape(2, 3, 3)
  padded = transforms.pad_image(image, 4, 5)
  assert padded.shape == (4, 5, 3) and padded.dtype == np.float32
  np.testing.assert_array_equal(padded[:2, :3], image)
  assert not padded[2:].any() and not padded[:, 3:].any()
  with pytest.raises(ValueError, match='does not fit'):
    transforms.pad_image(image, 1, 5)


@pytest.mark.parametrize('size', [(37, 53), (480, 640), (13, 9), (90, 200)])
def test_resize_uint8_within_one_level_of_the_exact_resize(size):
  image = np.random.default_rng(sum(size)).integers(0, 256, (61, 83, 3), dtype=np.uint8)
  out = transforms.resize_uint8(image, *size)
  assert out.dtype == np.uint8 and out.shape == size + (3,)
  exact = transforms.resize_image(image, *size)
  assert np.abs(out.astype(np.float32) - exact).max() <= 1.0
  # The same interpolation, not just close pixels: the mean error is well below a level.
  assert np.abs(out.astype(np.float32) - exact).mean() < 0.5


def test_resize_pixels_follows_the_backend():
  cfg = _data_config()
  image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
  np.testing.assert_array_equal(transforms.resize_pixels(image, 10, 15, cfg),
                                transforms.resize_uint8(image, 10, 15))
  assert transforms.image_dtype(cfg) == np.uint8
  cfg.resize_backend = 'torch'
  np.testing.assert_array_equal(transforms.resize_pixels(image, 10, 15, cfg),
                                transforms.resize_image(image, 10, 15))
  assert transforms.image_dtype(cfg) == np.float32
  cfg.resize_backend = 'pil'
  with pytest.raises(ValueError, match='data.resize_backend'):
    transforms.resize_pixels(image, 10, 15, cfg)


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


def _smallest_fitting(sizes, new_h, new_w):
  """Index of the smallest-area (h, w) in `sizes` holding new_h x new_w, by brute force."""
  best = None
  for i, (h, w) in enumerate(sizes):
    if new_h <= h and new_w <= w and (best is None or h * w < sizes[best][0] * sizes[best][1]):
      best = i
  return best


def test_choose_canvas_1x():
  cfg = _data_config()
  sizes = ((832, 1344), (832, 1088), (832, 1216), (832, 832))
  assert transforms.canvas_sizes(cfg) == sizes
  # (original h, w) -> (canvas index, transposed): 4:3, 3:4, 3:2, square, 16:9, 9:16.
  cases = {(480, 640): (1, False), (640, 480): (1, True), (427, 640): (2, False),
           (500, 500): (3, False), (360, 640): (0, False), (640, 360): (0, True)}
  for (h, w), expected in cases.items():
    for train in (False, True):  # the largest training shorter side is the test one, 800
      canvas = transforms.choose_canvas(h, w, cfg, train)
      assert (canvas.index, canvas.transpose) == expected, (h, w)
      assert (canvas.height, canvas.width) == sizes[expected[0]]
  # Every size fits the canvas it gets, and no smaller one would hold it.
  for h in range(100, 1000, 37):
    for w in range(100, 1000, 41):
      canvas = transforms.choose_canvas(h, w, cfg, train=False)
      new_h, new_w, _ = transforms.resize_shape(h, w, 'shorter_side', 800, 1333)
      if h > w:
        new_h, new_w = new_w, new_h
      assert canvas.transpose == (h > w)
      assert canvas.index == _smallest_fitting(sizes, new_h, new_w), (h, w)


def test_choose_canvas_uses_the_largest_training_resize():
  cfg = _data_config(min_size=640, train_min_sizes=(640, 832))
  # 480 x 640: 640 x 853 at test, up to 832 x 1109 in training.
  assert transforms.choose_canvas(480, 640, cfg, train=False).index == 1  # 832 x 1088
  assert transforms.choose_canvas(480, 640, cfg, train=True).index == 2  # 832 x 1216
  assert transforms.largest_resize(480, 640, cfg, train=True) == (832, 1109)
  assert transforms.choose_canvas(640, 480, cfg, train=False) == transforms.Canvas(
      1, 832, 1088, True)
  cfg.transpose_portrait = False
  with pytest.raises(ValueError, match='640 x 480 resizes to 853 x 640 and fits no canvas'):
    transforms.choose_canvas(640, 480, cfg, train=False)


def test_choose_canvas_large_scale_jitter_is_the_square_canvas():
  cfg = _data_config(large_scale_jitter=True, image_size=(1024, 1024), extra_canvases=(),
                     transpose_portrait=False, resize_mode='square', max_size=1024)
  for h, w in [(480, 640), (640, 480), (100, 2000)]:
    assert transforms.choose_canvas(h, w, cfg, train=True) == transforms.Canvas(
        0, 1024, 1024, False)


@pytest.mark.parametrize('overrides, match', [
    ({'extra_canvases': ((64, 64), (128, 128), (192, 192), (256, 256))}, 'at most 4'),
    ({'extra_canvases': ((800, 1088),)}, 'multiples of 64'),
    ({'image_size': (832, 1300)}, 'data.image_size: .*multiples of 64'),
    ({'extra_canvases': ((896, 1088),)}, 'does not fit inside data.image_size'),
    ({'extra_canvases': ((832, 1088), (832, 1088))}, 'repeated'),
    ({'large_scale_jitter': True}, 'data.large_scale_jitter'),
])
def test_bad_canvases_name_the_key(overrides, match):
  with pytest.raises(ValueError, match=match):
    transforms.canvas_sizes(_data_config(**overrides))


def test_transpose_is_undone_exactly():
  boxes = np.array([[1.5, 2.0, 7.25, 4.0], [0.0, 3.0, 2.0, 9.0]], np.float32)
  probs = np.random.default_rng(0).random((2, 28, 28)).astype(np.float32)
  info = np.array([40, 30, 0.5, 0, 0], np.float32)
  same = transforms.to_original_orientation(boxes, probs, info)
  assert same[0] is boxes and same[1] is probs and same[2] == (40, 30)
  # The detections of the transposed image (30 x 40): boxes swap x/y, masks transpose.
  transposed_info = np.array([30, 40, 0.5, 0, 1], np.float32)
  back = transforms.to_original_orientation(
      boxes[:, [1, 0, 3, 2]], probs.transpose(0, 2, 1), transposed_info)
  np.testing.assert_array_equal(back[0], boxes)
  np.testing.assert_array_equal(back[1], probs)
  assert back[2] == (40, 30)
  image = np.arange(24).reshape(2, 4, 3)
  np.testing.assert_array_equal(transforms.transpose_image(image)[3, 1], image[1, 3])
