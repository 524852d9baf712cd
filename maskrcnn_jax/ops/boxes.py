"""Box geometry and the box coder, for [x1, y1, x2, y2] boxes in absolute pixels.

Conventions follow torchvision / Detectron2: no "+1" in widths, center = x1 + 0.5 * w,
deltas (dx, dy, dw, dh) scaled by weights (wx, wy, ww, wh). All functions are pure jnp,
shape-static and usable under `jax.jit` and `jax.vmap`.
"""

import math

import jax
import jax.numpy as jnp

# Sizes are floored here in the coder so degenerate (e.g. padded) boxes give finite deltas.
_MIN_SIZE = 1e-6


def area(boxes: jax.Array) -> jax.Array:
  """Box areas; boxes with negative width or height have area 0.

  Args:
    boxes: [..., 4] float, x1y1x2y2.

  Returns:
    [...] float areas.
  """
  widths = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
  heights = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
  return widths * heights


def pairwise_iou(boxes_a: jax.Array, boxes_b: jax.Array,
                 valid_a: jax.Array | None = None,
                 valid_b: jax.Array | None = None) -> jax.Array:
  """Intersection over union of every pair, -1 for pairs involving an invalid box.

  Args:
    boxes_a: [N, 4] float, x1y1x2y2.
    boxes_b: [M, 4] float, x1y1x2y2.
    valid_a: [N] bool or None (all valid).
    valid_b: [M] bool or None (all valid).

  Returns:
    [N, M] float IoU in [0, 1]; 0.0 where the union is empty (zero-area pairs); -1.0 where
    either box is invalid, so a padded box is never a match, not even a negative one.
  """
  top_left = jnp.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])  # [N, M, 2]
  bottom_right = jnp.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])  # [N, M, 2]
  sides = jnp.maximum(bottom_right - top_left, 0.0)
  intersection = sides[..., 0] * sides[..., 1]
  union = area(boxes_a)[:, None] + area(boxes_b)[None, :] - intersection
  # The double where keeps both the value and its gradient finite for empty unions.
  nonempty = union > 0.0
  iou = jnp.where(nonempty, intersection / jnp.where(nonempty, union, 1.0), 0.0)
  valid = jnp.ones(iou.shape, bool)
  if valid_a is not None:
    valid = valid & valid_a[:, None]
  if valid_b is not None:
    valid = valid & valid_b[None, :]
  return jnp.where(valid, iou, -1.0)


def clip_boxes(boxes: jax.Array, height, width) -> jax.Array:
  """Clips boxes to the image [0, width] x [0, height].

  Args:
    boxes: [..., 4] float, x1y1x2y2.
    height: scalar or array broadcastable to boxes[..., 0]; may be traced.
    width: scalar or array broadcastable to boxes[..., 0]; may be traced.

  Returns:
    [..., 4] clipped boxes, same dtype.
  """
  height = jnp.asarray(height, boxes.dtype)
  width = jnp.asarray(width, boxes.dtype)
  x1 = jnp.clip(boxes[..., 0], 0.0, width)
  y1 = jnp.clip(boxes[..., 1], 0.0, height)
  x2 = jnp.clip(boxes[..., 2], 0.0, width)
  y2 = jnp.clip(boxes[..., 3], 0.0, height)
  return jnp.stack([x1, y1, x2, y2], axis=-1)


def _centers_and_sizes(boxes: jax.Array) -> tuple[jax.Array, ...]:
  """[..., 4] x1y1x2y2 -> (ctr_x, ctr_y, width, height), each [...]."""
  widths = boxes[..., 2] - boxes[..., 0]
  heights = boxes[..., 3] - boxes[..., 1]
  return boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights, widths, heights


def encode_boxes(boxes: jax.Array, reference: jax.Array,
                 weights: tuple[float, float, float, float] = (1., 1., 1., 1.)) -> jax.Array:
  """Regression targets that take `reference` to `boxes` (torchvision BoxCoder.encode).

  dx = wx * (ctr_x - ref_ctr_x) / ref_w, dw = ww * log(w / ref_w), likewise for y/h.
  Widths and heights are floored at 1e-6 so degenerate boxes (e.g. padding) give finite
  deltas instead of inf/NaN; identical to torchvision for boxes at least that large.

  Args:
    boxes: [..., 4] float target boxes, x1y1x2y2.
    reference: [..., 4] float reference boxes (anchors or proposals), broadcastable.
    weights: (wx, wy, ww, wh).

  Returns:
    [..., 4] deltas (dx, dy, dw, dh).
  """
  wx, wy, ww, wh = weights
  ctr_x, ctr_y, widths, heights = _centers_and_sizes(boxes)
  ref_ctr_x, ref_ctr_y, ref_widths, ref_heights = _centers_and_sizes(reference)
  widths, heights = jnp.maximum(widths, _MIN_SIZE), jnp.maximum(heights, _MIN_SIZE)
  ref_widths = jnp.maximum(ref_widths, _MIN_SIZE)
  ref_heights = jnp.maximum(ref_heights, _MIN_SIZE)
  dx = wx * (ctr_x - ref_ctr_x) / ref_widths
  dy = wy * (ctr_y - ref_ctr_y) / ref_heights
  dw = ww * jnp.log(widths / ref_widths)
  dh = wh * jnp.log(heights / ref_heights)
  return jnp.stack([dx, dy, dw, dh], axis=-1)


def decode_boxes(deltas: jax.Array, reference: jax.Array,
                 weights: tuple[float, float, float, float] = (1., 1., 1., 1.),
                 clamp: float = math.log(1000. / 16)) -> jax.Array:
  """Applies deltas to reference boxes (torchvision BoxCoder.decode_single).

  dw, dh are clamped from above at `clamp` before exp so no box grows by more than
  1000/16 per side in one step (Detectron2's scale_clamp).

  Args:
    deltas: [..., 4] float (dx, dy, dw, dh), scaled by `weights`.
    reference: [..., 4] float reference boxes, x1y1x2y2, broadcastable.
    weights: (wx, wy, ww, wh).
    clamp: upper bound on dw / ww and dh / wh.

  Returns:
    [..., 4] decoded boxes x1y1x2y2 (not clipped to the image).
  """
  wx, wy, ww, wh = weights
  ref_ctr_x, ref_ctr_y, ref_widths, ref_heights = _centers_and_sizes(reference)
  dx = deltas[..., 0] / wx
  dy = deltas[..., 1] / wy
  dw = jnp.minimum(deltas[..., 2] / ww, clamp)
  dh = jnp.minimum(deltas[..., 3] / wh, clamp)
  ctr_x = dx * ref_widths + ref_ctr_x
  ctr_y = dy * ref_heights + ref_ctr_y
  half_w = 0.5 * jnp.exp(dw) * ref_widths
  half_h = 0.5 * jnp.exp(dh) * ref_heights
  return jnp.stack([ctr_x - half_w, ctr_y - half_h, ctr_x + half_w, ctr_y + half_h], axis=-1)
