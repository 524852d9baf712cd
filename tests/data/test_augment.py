"""Tests of data/augment.py: scale augmentation, large-scale jitter, box crops, from definitions."""

import math

import numpy as np
import pytest

from maskrcnn_jax.config import default_config
from maskrcnn_jax.data import augment
from maskrcnn_jax.data import transforms

LSJ = dict(large_scale_jitter=True, image_size=(1024, 1024), extra_canvases=(),
           transpose_portrait=False, resize_mode='square', min_size=1024, max_size=1024)


def _data_config(**overrides):
  c = default_config().data
  c.unlock()
  c.update(overrides)
  return c


def test_evaluation_is_the_test_resize():
  cfg = _data_config()
  canvas = transforms.choose_canvas(480, 640, cfg, train=False)
  g = augment.draw_geometry(480, 640, cfg, canvas, None)
  assert g == augment.Geometry(800, 1066, 800 / 480, False, 0, 0, 800, 1066)
  assert not g.cropped


def test_scale_augmentation_draws_detectron2s_shorter_sides():
  cfg = _data_config()
  canvas = transforms.choose_canvas(480, 640, cfg, train=True)
  shorter, flips = [], []
  for seed in range(300):
    g = augment.draw_geometry(480, 640, cfg, canvas, np.random.default_rng(seed))
    assert not g.cropped
    assert (g.new_height, g.new_width) == (math.floor(480 * g.scale), math.floor(640 * g.scale))
    shorter.append(g.new_height)
    flips.append(g.flip)
  assert sorted(set(shorter)) == [640, 672, 704, 736, 768, 800]
  counts = np.bincount([(s - 640) // 32 for s in shorter])
  assert counts.min() > 300 / 6 / 2  # roughly uniform
  assert 0.35 < np.mean(flips) < 0.65
  # The longer side stays capped at max_size: 300 x 1000 is limited by 1333, not 640+.
  g = augment.draw_geometry(300, 1000, cfg, transforms.choose_canvas(300, 1000, cfg, True),
                            np.random.default_rng(0))
  assert g.new_width <= 1333 and g.new_height == int(300 * 1333 / 1000)
  no_flip = _data_config(random_flip=False)
  assert not any(augment.draw_geometry(480, 640, no_flip, canvas,
                                       np.random.default_rng(s)).flip for s in range(20))


def test_large_scale_jitter_resize_and_crop():
  cfg = _data_config(**LSJ)
  canvas = transforms.choose_canvas(480, 640, cfg, train=True)
  scales, crops = [], 0
  for seed in range(400):
    g = augment.draw_geometry(480, 640, cfg, canvas, np.random.default_rng(seed))
    s = g.scale * 640 / 1024  # the drawn s: the longer side fits 1024 s
    assert 0.1 - 1e-9 <= s <= 2.0 + 1e-9
    assert (g.new_height, g.new_width) == (round(480 * g.scale), round(640 * g.scale))
    assert (g.crop_height, g.crop_width) == (min(g.new_height, 1024), min(g.new_width, 1024))
    assert 0 <= g.crop_y <= g.new_height - g.crop_height
    assert 0 <= g.crop_x <= g.new_width - g.crop_width
    scales.append(s)
    crops += g.cropped
  assert min(scales) < 0.2 and max(scales) > 1.9  # the whole range is drawn
  assert 0 < crops < 400  # only images larger than the canvas are cropped
  # Same seed, same draw.
  a = augment.draw_geometry(480, 640, cfg, canvas, np.random.default_rng(7))
  assert a == augment.draw_geometry(480, 640, cfg, canvas, np.random.default_rng(7))
  cfg.lsj_scale_range = (2.0, 0.1)
  with pytest.raises(ValueError, match='data.lsj_scale_range'):
    augment.draw_geometry(480, 640, cfg, canvas, np.random.default_rng(0))


def test_crop_boxes_clips_and_drops():
  g = augment.Geometry(200, 300, 1.0, False, crop_y=50, crop_x=100, crop_height=100,
                       crop_width=150)
  boxes = np.array([[110, 60, 150, 90],  # inside: shifted only
                    [50, 40, 120, 70],  # overlaps the left and top edges: clipped
                    [260, 60, 290, 90],  # right of the window: dropped
                    [120, 70, 120, 90]], np.float32)  # empty before the crop: kept
  out, keep, clipped = augment.crop_boxes(boxes, g)
  np.testing.assert_array_equal(out[0], [10, 10, 50, 40])
  np.testing.assert_array_equal(out[1], [0, 0, 20, 20])
  np.testing.assert_array_equal(keep, [True, True, False, True])
  np.testing.assert_array_equal(clipped, [False, True, True, False])


@pytest.mark.parametrize('flip', [False, True])
def test_window_box_maps_back_to_the_original(flip):
  height, width = 300, 400
  g = augment.Geometry(450, 600, 1.5, flip, crop_y=30, crop_x=70, crop_height=400,
                       crop_width=500)
  original = np.array([100.0, 50.0, 200.0, 150.0])
  resized = transforms.resize_boxes(original, height, width, 450, 600)
  if flip:
    resized = transforms.flip_boxes(resized, 600)
  window = resized[0] - [70, 30, 70, 30]
  np.testing.assert_allclose(augment.window_box_to_original(window, height, width, g),
                             original, rtol=0, atol=1e-4)
