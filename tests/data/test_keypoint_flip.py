"""data/keypoint_flip.py: left/right partners and the mirrored keypoints."""

import numpy as np

from maskrcnn_jax.data import keypoint_flip

COCO_PERSON = ('nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'left_shoulder',
               'right_shoulder', 'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist',
               'left_hip', 'right_hip', 'left_knee', 'right_knee', 'left_ankle',
               'right_ankle')


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
