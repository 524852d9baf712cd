"""Detectron2's ResizeShortestEdge: recorded output sizes and Pillow pixels.

tests/fixtures/detectron2_resize.npz comes from tests/tools/record_detectron2_resize.py.
"""

import numpy as np

from maskrcnn_jax.config import default_config
from maskrcnn_jax.data import transforms
from tests.conftest import FIXTURES


def test_shortest_edge_sizes_match_detectron2():
  data = np.load(FIXTURES / 'detectron2_resize.npz')
  ours = [transforms.resize_shape(int(h), int(w), 'shortest_edge', 800, 1333)[:2]
          for h, w in data['sizes']]
  np.testing.assert_array_equal(np.array(ours), data['resized'])
  floored = [transforms.resize_shape(int(h), int(w), 'shorter_side', 800, 1333)[:2]
             for h, w in data['sizes']]
  assert (np.array(floored) != data['resized']).any()  # the rounding matters


def test_pillow_backend_matches_detectron2_pixels():
  data = np.load(FIXTURES / 'detectron2_resize.npz')
  config = default_config().data
  config.resize_backend = 'pillow'
  for i in range(4):
    image, expected = data[f'image_{i}'], data[f'pixels_{i}']
    h, w, _ = transforms.resize_shape(*image.shape[:2], 'shortest_edge', int(data['short']),
                                      int(data['long']))
    assert (h, w) == expected.shape[:2]
    pixels = transforms.resize_pixels(image, h, w, config)
    assert pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, expected)
  assert transforms.image_dtype(config) == np.uint8


def test_shortest_edge_trains_on_the_drawn_sizes():
  config = default_config().data
  config.resize_mode = 'shortest_edge'
  config.train_min_sizes = (600, 700)
  assert transforms.largest_resize(480, 641, config, train=True) == (700, 935)  # 934.8
  assert transforms.largest_resize(480, 641, config, train=False) == (800, 1068)  # 1068.3
