"""inference/keypoint_decoding.py: torch's bicubic kernel, the canvas transpose undone."""

import numpy as np

from maskrcnn_jax.inference import keypoint_decoding


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
