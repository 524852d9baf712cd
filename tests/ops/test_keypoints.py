"""ops/keypoints.py against definitions: the bicubic resize, the flip, the original frame.

The keypoint targets and loss are checked against a NumPy definition in
tests/model/test_keypoint_rcnn.py, heatmaps_to_keypoints against torchvision there.
"""

import numpy as np

from maskrcnn_jax.data import keypoint_flip
from maskrcnn_jax.inference import keypoint_decoding

COCO_PERSON = ('nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'left_shoulder',
               'right_shoulder', 'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist',
               'left_hip', 'right_hip', 'left_knee', 'right_knee', 'left_ankle',
               'right_ankle')


def _keys_cubic(d, a=-0.75):
  """Keys' cubic convolution kernel W(d), written from its definition."""
  d = abs(d)
  if d <= 1:
    return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
  if d < 2:
    return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a
  return 0.0


def test_bicubic_matrix_is_keys_kernel_with_clamped_taps():
  for in_size, out_size in ((7, 19), (56, 23), (5, 5), (3, 40)):
    matrix = keypoint_decoding.bicubic_matrix(in_size, out_size)
    reference = np.zeros((out_size, in_size))
    for i in range(out_size):
      src = (i + 0.5) * in_size / out_size - 0.5
      for j in range(int(np.floor(src)) - 1, int(np.floor(src)) + 3):
        reference[i, min(max(j, 0), in_size - 1)] += _keys_cubic(src - j)
    np.testing.assert_allclose(matrix, reference, atol=1e-12)
    np.testing.assert_allclose(matrix.sum(1), 1.0, atol=1e-12)
  np.testing.assert_allclose(keypoint_decoding.bicubic_matrix(6, 6), np.eye(6), atol=1e-12)


def test_flip_indices_pair_left_and_right():
  flip = keypoint_flip.flip_indices(COCO_PERSON)
  assert flip.tolist() == [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
  assert keypoint_flip.flip_indices(('top', 'right', 'bottom', 'left')).tolist() == [0, 3, 2, 1]


def test_flip_indices_refuses_a_missing_partner():
  try:
    keypoint_flip.flip_indices(('nose', 'left_eye'))
  except ValueError as e:
    assert "'right_eye'" in str(e)
  else:
    raise AssertionError('expected a ValueError')


def test_flip_keypoints_mirrors_swaps_and_keeps_unlabelled_zero():
  keypoints = np.array([[[10.5, 3.0, 2], [0, 0, 0], [30.25, 7.0, 1]]], np.float32)
  flipped = keypoint_flip.flip_keypoints(keypoints, 40.0, np.array([0, 2, 1]))
  np.testing.assert_array_equal(flipped, [[[29.5, 3.0, 2], [9.75, 7.0, 1], [0, 0, 0]]])


def test_keypoints_in_original_undoes_transpose_and_scale():
  rng = np.random.default_rng(0)
  heatmaps = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
  boxes = np.array([[4, 6, 30, 20], [0, 0, 9.5, 40]], np.float32)
  # The same detections on a transposed canvas: boxes and heatmaps transposed.
  plain, plain_scores = keypoint_decoding.keypoints_in_original(heatmaps, boxes, False,
                                                                (48, 64), (96, 128))
  transposed, scores = keypoint_decoding.keypoints_in_original(
      np.swapaxes(heatmaps, -1, -2), boxes[:, [1, 0, 3, 2]], True, (64, 48), (96, 128))
  np.testing.assert_allclose(transposed, plain, atol=1e-5)
  np.testing.assert_array_equal(scores, plain_scores)
  resized, _ = keypoint_decoding.heatmaps_to_keypoints(heatmaps, boxes)
  np.testing.assert_allclose(plain[..., :2], resized[..., :2] * 2.0, rtol=1e-6)
