"""RoIPool over one feature map or an FPN pyramid, as a static-shape gather.

torchvision.ops.roi_pool's semantics (its CPU kernel) with NHWC features and
[R, S, S, C] outputs; each bin's max is taken over a static window of cells.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from maskrcnn_jax.ops import roi_levels


def _c_round(x):
  """C's round(): halves away from zero (jnp.round rounds halves to even)."""
  return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


def _roi_pool_flat(flat_features, boxes, output_size, max_bin_cells, scale, height, width,
                   offset):
  """RoIPool of each RoI on its own map inside a flattened feature buffer.

  Each bin reads a fixed max_bin_cells x max_bin_cells window from its start corner and
  masks the cells past its end, so it is exact when no bin spans more cells than that.

  Args:
    flat_features: [N, C], maps stored row-major one after another.
    boxes: [R, 4] x1y1x2y2 in image pixels.
    output_size: S.
    max_bin_cells: K, window side per bin.
    scale: [R] spatial scale of each RoI's map.
    height, width: [R] int32 map extent of each RoI.
    offset: [R] int32 index of each RoI's map's first cell in flat_features.

  Returns:
    [R, S, S, C] in flat_features.dtype; empty bins are 0.
  """
  boxes = jnp.asarray(boxes)
  coord_dtype = jnp.promote_types(boxes.dtype, jnp.float32)
  corners = _c_round(boxes.astype(coord_dtype) * scale[:, None].astype(coord_dtype))
  corners = corners.astype(jnp.int32)
  roi_size = jnp.maximum(corners[:, 2:] - corners[:, :2] + 1, 1)
  bin_size = roi_size.astype(coord_dtype) / output_size  # [R, 2] (x, y)
  p = jnp.arange(output_size, dtype=coord_dtype)

  def bin_edges(axis, size):
    lo = jnp.floor(p * bin_size[:, axis:axis + 1]).astype(jnp.int32)
    hi = jnp.ceil((p + 1) * bin_size[:, axis:axis + 1]).astype(jnp.int32)
    start = corners[:, axis:axis + 1]
    return (jnp.clip(lo + start, 0, size[:, None]), jnp.clip(hi + start, 0, size[:, None]))

  y_start, y_end = bin_edges(1, height)  # [R, S]
  x_start, x_end = bin_edges(0, width)

  def body(cell, running_max):
    y = y_start + cell // max_bin_cells
    x = x_start + cell % max_bin_cells
    inside = (y < y_end)[:, :, None] & (x < x_end)[:, None, :]  # [R, S, S]
    index = (offset[:, None, None] + jnp.minimum(y, height[:, None] - 1)[:, :, None]
             * width[:, None, None] + jnp.minimum(x, width[:, None] - 1)[:, None, :])
    values = jnp.where(inside[..., None], flat_features[index], -jnp.inf)
    return jnp.maximum(running_max, values)

  shape = (boxes.shape[0], output_size, output_size, flat_features.shape[-1])
  pooled = jax.lax.fori_loop(0, max_bin_cells * max_bin_cells, body,
                             jnp.full(shape, -jnp.inf, flat_features.dtype))
  empty = (y_end <= y_start)[:, :, None] | (x_end <= x_start)[:, None, :]
  return jnp.where(empty[..., None], 0, pooled).astype(flat_features.dtype)


def roi_pool(features: jax.Array, boxes: jax.Array, output_size: int, spatial_scale: float,
             max_bin_cells: int = 8) -> jax.Array:
  """torchvision.ops.roi_pool on one image and one level (NHWC).

  Exact whenever every bin spans at most max_bin_cells cells a side (bin side <=
  ceil(roi cells / S) + 1); larger bins are pooled over their first max_bin_cells cells.

  Args:
    features: [H, W, C].
    boxes: [R, 4] float32 x1y1x2y2 image pixels.
    output_size: S, bins per side.
    spatial_scale: feature cells per image pixel (1 / stride).
    max_bin_cells: K, static window side read per bin.

  Returns:
    [R, S, S, C] in features.dtype: max over each bin's cells, 0 for empty bins.
  """
  geometry = roi_levels.single_level_geometry(features, boxes.shape[0], spatial_scale)
  return _roi_pool_flat(geometry[0], boxes, output_size, max_bin_cells, *geometry[1:])


def multilevel_roi_pool(features: Sequence[jax.Array], boxes: jax.Array, output_size: int,
                        max_bin_cells: int = 8, min_level: int = 2) -> jax.Array:
  """RoIPool (torchvision.ops.roi_pool) from each box's assigned FPN level.

  Level assignment keeps typical RoIs at ~14 cells a side (S = 7: bins of ~2-3 cells), so
  the max_bin_cells window is exact except for boxes far larger than their level.

  Args:
    features: per level [B, H_l, W_l, C] for levels min_level.. (level l has stride 2**l).
    boxes: [B, R, 4] float32 x1y1x2y2 image pixels.
    output_size: S.
    max_bin_cells: K, see roi_pool.
    min_level: level of features[0].

  Returns:
    [B, R, S, S, C] in the features' dtype.
  """
  op = lambda flat, b, *geometry: _roi_pool_flat(flat, b, output_size, max_bin_cells,
                                                 *geometry)
  return roi_levels.multilevel(op, features, boxes, min_level)
