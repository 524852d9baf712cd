"""FPN levels for RoI pooling: which level each box reads, and the pyramid as one buffer.

Every RoI reads from a flattened [H * W, C] feature map through a per-RoI geometry
(scale, height, width, offset into the flat map), so one gather serves a single level
and a whole pyramid alike (`ops/roi_align.py`, `ops/roi_pool.py`).
"""

import jax
import jax.numpy as jnp
import numpy as np


def assign_levels(boxes: jax.Array, min_level: int = 2, max_level: int = 5,
                  canonical_level: int = 4, canonical_size: int = 224) -> jax.Array:
  """FPN level per box, torchvision's LevelMapper (FPN paper eq. 1).

  level = floor(canonical_level + log2(sqrt(area) / canonical_size) + 1e-6), clamped to
  [min_level, max_level]; the 1e-6 sits outside the log2 as in torchvision. Negative
  widths/heights count as 0 (such boxes go to min_level).

  Args:
    boxes: [..., 4] x1y1x2y2 image pixels.

  Returns:
    [...] int32 levels.
  """
  boxes = jnp.asarray(boxes)
  boxes = boxes.astype(jnp.promote_types(boxes.dtype, jnp.float32))
  area = (jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
          * jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0))
  level = jnp.floor(canonical_level + jnp.log2(jnp.sqrt(area) / canonical_size) + 1e-6)
  return jnp.clip(level, min_level, max_level).astype(jnp.int32)


def single_level_geometry(features, num_rois, spatial_scale):
  """Flat [H * W, C] map plus per-RoI (scale, height, width, offset) for one level."""
  features = jnp.asarray(features)
  height, width, channels = features.shape
  full = lambda value, dtype: jnp.full((num_rois,), value, dtype)
  return (features.reshape(height * width, channels), full(spatial_scale, jnp.float32),
          full(height, jnp.int32), full(width, jnp.int32), full(0, jnp.int32))


def multilevel(op, features, boxes, min_level):
  """Runs op(flat [N, C], boxes [R, 4], scale, height, width, offset) per image.

  The levels are flattened and concatenated once ([B, sum H_l W_l, C], 4/3 of level 2)
  and each RoI gathers from its own level's slice: one gather of R RoIs instead of L
  gathers of R RoIs followed by a select, which would hold L x [R, S, S, C] at once.

  Args:
    features: per level [B, H_l, W_l, C], levels min_level.. (stride 2**l).
    boxes: [B, R, 4].

  Returns:
    [B, R, S, S, C].
  """
  batch, channels = features[0].shape[0], features[0].shape[-1]
  heights = np.array([f.shape[1] for f in features], np.int32)
  widths = np.array([f.shape[2] for f in features], np.int32)
  offsets = np.concatenate([[0], np.cumsum(heights * widths)[:-1]]).astype(np.int32)
  scales = np.array([2.0**-(min_level + i) for i in range(len(features))], np.float32)
  flat = jnp.concatenate([f.reshape(batch, -1, channels) for f in features], axis=1)
  index = assign_levels(boxes, min_level, min_level + len(features) - 1) - min_level
  geometry = [jnp.asarray(a)[index] for a in (scales, heights, widths, offsets)]
  return jax.vmap(op)(flat, boxes, *geometry)
