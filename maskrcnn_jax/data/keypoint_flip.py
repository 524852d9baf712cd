"""The horizontal flip of COCO keypoints: mirrored x and the left/right partners swapped."""

from typing import Sequence

import numpy as np


def flip_indices(names: Sequence[str]) -> np.ndarray:
  """[K] int: the keypoint each one becomes under a left-right flip.

  'left' and 'right' swapped in a name (`left_eye` <-> `right_eye`) name its partner;
  other keypoints (`nose`) stay. A name without its partner is an error.
  """
  names = [str(n) for n in names]
  index = {name: i for i, name in enumerate(names)}
  out = np.arange(len(names))
  for i, name in enumerate(names):
    partner = (name.replace('left', '\0').replace('right', 'left').replace('\0', 'right'))
    if partner != name:
      if partner not in index:
        raise ValueError(f'keypoint {name!r} has no {partner!r} to swap with when flipped')
      out[i] = index[partner]
  return out


def flip_keypoints(keypoints: np.ndarray, width: float, flip_map: np.ndarray) -> np.ndarray:
  """[N, K, 3] keypoints mirrored in an image of `width` (x' = width - x), left/right swapped.

  Unlabelled keypoints (v = 0) stay zeros.
  """
  keypoints = np.asarray(keypoints, np.float32)
  flipped = keypoints[:, flip_map].copy()
  flipped[..., 0] = np.where(flipped[..., 2] > 0, width - flipped[..., 0], 0.0)
  return flipped
