"""RoIAlign and RoIPool over one feature map or an FPN pyramid, as static-shape gathers.

Semantics follow torchvision.ops.roi_align / roi_pool exactly (CPU kernels), with NHWC
features and [R, S, S, C] outputs. Every RoI reads from a flattened [H * W, C] feature
map through a per-RoI geometry (scale, height, width, offset into the flat map), so one
gather serves a single level and a whole pyramid alike. As torchvision's, RoIAlign is
differentiable in the features only (reverse mode), not in the boxes.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from maskrcnn_jax import xla_options


def _bin_coordinates(start, bin_size, output_size, sampling_ratio, grid=None):
  """Sample coordinates along one axis, torchvision's order of float operations.

  Args:
    start: [R] RoI start in feature coordinates.
    bin_size: [R] bin length in feature cells.
    output_size: S, bins per side.
    sampling_ratio: G, samples per bin side (the static grid, or the adaptive cap).
    grid: None, or [R] samples per bin side of each RoI (adaptive; >= 1), dividing the
      bin instead of G; samples g >= grid are computed but carry no weight.

  Returns:
    [R, S * G]: start + p * bin + (g + 0.5) * bin / G (or / grid), bin-major.
  """
  p = jnp.repeat(jnp.arange(output_size), sampling_ratio).astype(start.dtype)
  g = jnp.tile(jnp.arange(sampling_ratio), output_size).astype(start.dtype) + 0.5
  divisor = sampling_ratio if grid is None else grid[:, None].astype(start.dtype)
  return (start[:, None] + p * bin_size[:, None]
          + g * bin_size[:, None] / divisor)


def _adaptive_grid(bin_size, output_size, max_sampling_ratio):
  """torchvision's sampling_ratio <= 0: ceil(RoI size / S) samples per bin side, capped.

  Args:
    bin_size: [R, 2] bin (x, y) lengths in feature cells.
    output_size: S.
    max_sampling_ratio: cap M; RoIs over M * S cells a side get M samples per bin.

  Returns:
    grid: [R, 2] int32 samples per bin side in [1, M] (for the coordinates).
    mask_x, mask_y: [R, S * M] 1.0 for the samples g < grid, else 0.0.
    count: [R] the mean's divisor, max(grid_x * grid_y, 1) before the floor at 1.
  """
  exact = jnp.ceil(bin_size).astype(jnp.int32)  # ceil(roi_size / S), 0 for empty RoIs
  grid = jnp.clip(exact, 0, max_sampling_ratio)
  g = jnp.tile(jnp.arange(max_sampling_ratio), output_size)
  mask = (g[None, :, None] < grid[:, None, :]).astype(bin_size.dtype)  # [R, S*M, 2]
  count = jnp.maximum(grid[:, 0] * grid[:, 1], 1).astype(bin_size.dtype)
  return jnp.maximum(grid, 1), mask[..., 0], mask[..., 1], count


def _interpolation_1d(coords, size):
  """torchvision's bilinear border rules along one axis.

  Args:
    coords: [R, P] sample coordinates.
    size: [R] int32 feature extent (H or W) of each RoI's map.

  Returns:
    low, high: [R, P] int32 neighbour indices in [0, size - 1].
    w_low, w_high: [R, P] weights, zero where the sample is outside [-1, size].
  """
  size = size[:, None]
  inside = (coords >= -1.0) & (coords <= size.astype(coords.dtype))
  coords = jnp.maximum(coords, 0.0)
  low = jnp.floor(coords).astype(jnp.int32)
  at_edge = low >= size - 1
  low = jnp.where(at_edge, size - 1, low)
  high = jnp.where(at_edge, size - 1, low + 1)
  coords = jnp.where(at_edge, low.astype(coords.dtype), coords)
  frac = coords - low.astype(coords.dtype)
  return low, high, jnp.where(inside, 1.0 - frac, 0.0), jnp.where(inside, frac, 0.0)


def _roi_align_flat(flat_features, boxes, output_size, sampling_ratio, aligned, scale,
                    height, width, offset, max_sampling_ratio=0):
  """RoIAlign of each RoI on its own map inside a flattened feature buffer.

  Args:
    flat_features: [N, C], maps stored row-major one after another.
    boxes: [R, 4] x1y1x2y2 in image pixels.
    output_size: S.
    sampling_ratio: G > 0 samples per bin side; 0: adaptive (see roi_align).
    aligned: torchvision's half-pixel offset.
    scale: [R] spatial scale of each RoI's map.
    height, width: [R] int32 map extent of each RoI.
    offset: [R] int32 index of each RoI's map's first cell in flat_features.
    max_sampling_ratio: the adaptive grid's cap M (sampling_ratio 0 only).

  Returns:
    [R, S, S, C] in flat_features.dtype; reverse-mode differentiable in flat_features.
  """
  boxes = jax.lax.stop_gradient(jnp.asarray(boxes))  # as torchvision: no box gradient
  coord_dtype = jnp.promote_types(boxes.dtype, jnp.float32)
  boxes = boxes.astype(coord_dtype)
  shift = 0.5 if aligned else 0.0
  start = boxes[:, :2] * scale[:, None].astype(coord_dtype) - shift
  roi_size = boxes[:, 2:] * scale[:, None].astype(coord_dtype) - shift - start
  if not aligned:
    roi_size = jnp.maximum(roi_size, 1.0)
  bin_size = roi_size / output_size
  if sampling_ratio > 0:
    grid = (None, None)
  else:  # a static M x M grid per bin, of which each RoI weighs its first grid_y x grid_x
    sampling_ratio = max_sampling_ratio
    grid, mask_x, mask_y, count = _adaptive_grid(bin_size, output_size, sampling_ratio)
    grid = (grid[:, 0], grid[:, 1])
  ys = _bin_coordinates(start[:, 1], bin_size[:, 1], output_size, sampling_ratio, grid[1])
  xs = _bin_coordinates(start[:, 0], bin_size[:, 0], output_size, sampling_ratio, grid[0])
  y_low, y_high, wy_low, wy_high = _interpolation_1d(ys, height)
  x_low, x_high, wx_low, wx_high = _interpolation_1d(xs, width)
  if grid[0] is None:
    divisor = sampling_ratio**2
  else:
    wy_low, wy_high = wy_low * mask_y, wy_high * mask_y
    wx_low, wx_high = wx_low * mask_x, wx_high * mask_x
    divisor = count[:, None, None, None, None]
  # Each bin is a weighted sum of G * G * 4 cells: its samples' four neighbours,
  # with the bilinear weights divided by the G * G samples of the bin mean.
  rows = jnp.stack([y_low, y_high], -1) * width[:, None, None]  # [R, S*G, 2]
  cols = jnp.stack([x_low, x_high], -1)  # [R, S*G, 2]
  index = (offset[:, None, None, None, None] + rows[:, :, None, :, None]
           + cols[:, None, :, None, :])  # [R, S*G, S*G, 2, 2]
  weight = (jnp.stack([wy_low, wy_high], -1)[:, :, None, :, None]
            * jnp.stack([wx_low, wx_high], -1)[:, None, :, None, :])  # [R, S*G, S*G, 2, 2]
  shape = (boxes.shape[0], output_size, sampling_ratio, output_size, sampling_ratio, 4)
  pooled = _weighted_gather(flat_features, index.reshape(shape),
                            (weight / divisor).reshape(shape) if grid[0] is not None
                            else weight.reshape(shape) / divisor)
  return pooled.astype(flat_features.dtype)


@jax.custom_vjp
def _weighted_gather(flat_features: jax.Array, index: jax.Array, weight: jax.Array
                     ) -> jax.Array:
  """Each bin's weighted sum of its samples' bilinear neighbours, at least in float32.

  A sum of G * G * 4 gathers of [R, S, S, C], and a gradient that scatter-adds the same
  G * G * 4 terms into a buffer of the map's size: neither direction holds the
  [R, S, G, S, G, 4, C] neighbour tensor (400 MB a 512-RoI box head at C = 256), and the
  features are read in their own dtype (a bfloat16 pyramid is never copied to float32);
  sums and the gradient's buffer are float32 (or the features' wider dtype). No gradient
  reaches `weight` (the boxes), as in torchvision's roi_align.

  Args:
    flat_features: [N, C] in the compute dtype.
    index: [R, S, G, S, G, 4] int32 rows of flat_features.
    weight: [R, S, G, S, G, 4] float, bilinear weight / (G * G).

  Returns:
    [R, S, S, C] in the accumulation dtype (float32, or float64 for float64 features).
  """
  return _sum_of_terms(flat_features, index, weight, in_loop=False)


def _sum_of_terms(flat_features, index, weight, in_loop: bool):
  """`_weighted_gather`'s sum, unrolled (XLA fuses the gathers into it) or in a loop of
  G * G * 4 iterations; the same terms added in the same order either way."""
  dtype = _accumulation_dtype(flat_features.dtype)
  index, weight = _terms_first(index), _terms_first(weight.astype(dtype))

  def add_term(term, total):
    return total + weight[term][..., None] * flat_features[index[term]].astype(dtype)

  total = jnp.zeros(index.shape[1:] + flat_features.shape[-1:], dtype)
  if in_loop:
    return jax.lax.fori_loop(0, index.shape[0], add_term, total)
  for term in range(index.shape[0]):
    total = add_term(term, total)
  return total


def _accumulation_dtype(dtype):
  return jnp.promote_types(dtype, jnp.float32)


def _weighted_gather_forward(flat_features, index, weight):
  residuals = (index, weight, jnp.zeros((0,), flat_features.dtype), flat_features.shape)
  # Only under differentiation, where the choice matters (xla_options); inference and
  # exported programs keep the unrolled sum, which every converter reads.
  pooled = _sum_of_terms(flat_features, index, weight, xla_options.sum_roi_terms_in_loop())
  return pooled, residuals


def _terms_first(x):
  """[R, S, G, S, G, 4] -> [G * G * 4, R, S, S]: one [R, S, S] slice per neighbour term."""
  rois, size, g_y, _, g_x, neighbours = x.shape
  return jnp.transpose(x, (2, 4, 5, 0, 1, 3)).reshape(g_y * g_x * neighbours, rois, size,
                                                     size)


def _weighted_gather_backward(residuals, output_grad):
  index, weight, dtype_carrier, shape = residuals
  dtype = _accumulation_dtype(dtype_carrier.dtype)
  index, weight = _terms_first(index), _terms_first(weight.astype(dtype))

  # One term per iteration (a static trip count): XLA would otherwise compute every
  # term's [R, S, S, C] update before the first scatter.
  def add_term(term, grad):
    return grad.at[index[term]].add(weight[term][..., None] * output_grad)

  # The zero buffer is made from a value of output_grad so that it cannot exist before
  # the backward pass: a buffer of zeros has no inputs, and XLA:CPU's scheduler filled
  # it during the forward pass, one map-sized buffer per pooling held through its peak.
  # (0 * |g| is +0 for any finite g; a non-finite g is a diverged step in any case.)
  zeros = jnp.zeros(shape, dtype) * jnp.abs(output_grad.reshape(-1)[0]).astype(dtype)
  grad = jax.lax.fori_loop(0, index.shape[0], add_term, zeros)
  return grad.astype(dtype_carrier.dtype), None, None


_weighted_gather.defvjp(_weighted_gather_forward, _weighted_gather_backward)


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


def _single_level_geometry(features, num_rois, spatial_scale):
  """Flat [H * W, C] map plus per-RoI (scale, height, width, offset) for one level."""
  features = jnp.asarray(features)
  height, width, channels = features.shape
  full = lambda value, dtype: jnp.full((num_rois,), value, dtype)
  return (features.reshape(height * width, channels), full(spatial_scale, jnp.float32),
          full(height, jnp.int32), full(width, jnp.int32), full(0, jnp.int32))


def roi_align(features: jax.Array, boxes: jax.Array, output_size: int, spatial_scale: float,
              sampling_ratio: int, aligned: bool, max_sampling_ratio: int = 0) -> jax.Array:
  """torchvision.ops.roi_align on one image and one level (NHWC).

  Args:
    features: [H, W, C].
    boxes: [R, 4] float32 x1y1x2y2 image pixels.
    output_size: S, bins per side.
    spatial_scale: feature cells per image pixel (1 / stride).
    sampling_ratio: G > 0 bilinear samples per bin side (a static grid), or 0:
      adaptive, ceil(RoI size / S) per bin side and axis (torchvision's and Detectron2's
      POOLER_SAMPLING_RATIO 0), computed on a static max_sampling_ratio grid whose
      extra samples are masked out: exact for RoIs up to max_sampling_ratio * S cells a
      side; a larger RoI's bins average max_sampling_ratio evenly spaced samples.
    aligned: shift box corners by -0.5 cell (pixel centers) and allow RoIs under 1 cell.
    max_sampling_ratio: M >= 1, the adaptive grid's cap (sampling_ratio 0 only).

  Returns:
    [R, S, S, C] in features.dtype, the mean of the G x G bilinear samples of each bin;
    reverse-mode differentiable in `features`, not in `boxes`.
  """
  _check_sampling(sampling_ratio, max_sampling_ratio)
  geometry = _single_level_geometry(features, boxes.shape[0], spatial_scale)
  return _roi_align_flat(geometry[0], boxes, output_size, sampling_ratio, aligned,
                         *geometry[1:], max_sampling_ratio=max_sampling_ratio)


def _check_sampling(sampling_ratio: int, max_sampling_ratio: int) -> None:
  if sampling_ratio < 0:
    raise ValueError(f'sampling_ratio must be > 0 (static grid) or 0 (adaptive), got '
                     f'{sampling_ratio}')
  if sampling_ratio == 0 and max_sampling_ratio < 1:
    raise ValueError('adaptive sampling (sampling_ratio 0) needs max_sampling_ratio >= 1, '
                     f'got {max_sampling_ratio}')


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
  geometry = _single_level_geometry(features, boxes.shape[0], spatial_scale)
  return _roi_pool_flat(geometry[0], boxes, output_size, max_bin_cells, *geometry[1:])


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


def _multilevel(op, features, boxes, min_level):
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


def multilevel_roi_align(features: Sequence[jax.Array], boxes: jax.Array, output_size: int,
                         sampling_ratio: int, aligned: bool, min_level: int = 2,
                         max_sampling_ratio: int = 0) -> jax.Array:
  """torchvision MultiScaleRoIAlign: RoIAlign from each box's assigned FPN level.

  Args:
    features: per level [B, H_l, W_l, C] for levels min_level.. (level l has stride 2**l).
    boxes: [B, R, 4] float32 x1y1x2y2 image pixels (zero boxes of padding go to min_level).
    output_size: S.
    sampling_ratio: G > 0, or 0: adaptive (see roi_align).
    aligned: see roi_align.
    min_level: level of features[0].
    max_sampling_ratio: the adaptive grid's cap (see roi_align).

  Returns:
    [B, R, S, S, C] in the features' dtype.
  """
  _check_sampling(sampling_ratio, max_sampling_ratio)
  op = lambda flat, b, *geometry: _roi_align_flat(flat, b, output_size, sampling_ratio,
                                                  aligned, *geometry,
                                                  max_sampling_ratio=max_sampling_ratio)
  return _multilevel(op, features, boxes, min_level)


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
  return _multilevel(op, features, boxes, min_level)
