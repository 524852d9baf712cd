"""`image_info`: the per-image geometry row of a batch, read by name (no jax, no host deps).

One row per image, [5] float32 (docs/design.md, "image_info"):
  resized height, resized width: the valid (unpadded) region of the canvas, in the canvas
    frame (after any transpose);
  scale: original pixels -> resized pixels;
  flipped: 1.0 when mirrored left-right (in the original orientation, before transposing);
  transposed: 1.0 when a portrait image lies transposed on a landscape canvas.
The accessors work on one row [5] or a batch [..., 5], NumPy or jnp alike.
"""

import numpy as np

HEIGHT, WIDTH, SCALE, FLIPPED, TRANSPOSED = range(5)
SIZE = 5


def make(height: float, width: float, scale: float, flipped: bool = False,
         transposed: bool = False) -> np.ndarray:
  """One row: [5] float32."""
  return np.array([height, width, scale, float(flipped), float(transposed)], np.float32)


def resized_height(info):
  """[..., 5] -> [...]: valid rows of the canvas."""
  return info[..., HEIGHT]


def resized_width(info):
  """[..., 5] -> [...]: valid columns of the canvas."""
  return info[..., WIDTH]


def resized_hw(info):
  """[..., 5] -> [..., 2]: (height, width) of the valid region, canvas frame."""
  return info[..., HEIGHT:WIDTH + 1]


def scale(info):
  return info[..., SCALE]


def flipped(info):
  return info[..., FLIPPED] > 0.5


def transposed(info):
  return info[..., TRANSPOSED] > 0.5
