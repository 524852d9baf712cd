"""RoIAlign over one feature map or an FPN pyramid, as static-shape gathers.

torchvision.ops.roi_align's semantics (its CPU kernel) with NHWC features and
[R, S, S, C] outputs, read through `ops/roi_levels.py`'s flat-map geometry. As
torchvision's, it is differentiable in the features only (reverse mode), not in the
boxes.

`sum_in_loop` chooses how the differentiated op adds each bin's G * G * 4 gathered
terms: unrolled (one fusion) or in a loop with a static trip count. Both add the same
terms in the same order (the last bit can differ where XLA fuses a multiply-add). The
loop is faster on XLA:CPU, where the unrolled sum is emitted a second time in the layout
the next conv's kernel gradient reads (docs/benchmarks.md). Without differentiation the
sum is always unrolled, the form every exporter reads.
"""

from collections.abc import Sequence
import functools

import jax
import jax.numpy as jnp

from maskrcnn_jax.ops import roi_levels


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
                    height, width, offset, max_sampling_ratio=0, sum_in_loop=False):
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
    sum_in_loop: the differentiated sum's form (module docstring).

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
                            else weight.reshape(shape) / divisor, sum_in_loop)
  return pooled.astype(flat_features.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _weighted_gather(flat_features: jax.Array, index: jax.Array, weight: jax.Array,
                     sum_in_loop: bool) -> jax.Array:
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
    sum_in_loop: under differentiation, add the terms in a loop (module docstring).

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


def _weighted_gather_forward(flat_features, index, weight, sum_in_loop):
  residuals = (index, weight, jnp.zeros((0,), flat_features.dtype), flat_features.shape)
  return _sum_of_terms(flat_features, index, weight, sum_in_loop), residuals


def _terms_first(x):
  """[R, S, G, S, G, 4] -> [G * G * 4, R, S, S]: one [R, S, S] slice per neighbour term."""
  rois, size, g_y, _, g_x, neighbours = x.shape
  return jnp.transpose(x, (2, 4, 5, 0, 1, 3)).reshape(g_y * g_x * neighbours, rois, size,
                                                     size)


def _weighted_gather_backward(sum_in_loop, residuals, output_grad):
  del sum_in_loop  # the scatter-add is one loop in both forms
  index, weight, dtype_carrier, shape = residuals
  dtype = _accumulation_dtype(dtype_carrier.dtype)
  index, weight = _terms_first(index), _terms_first(weight.astype(dtype))

  # One term per iteration (a static trip count): XLA would otherwise compute every
  # term's [R, S, S, C] update before the first scatter.
  def add_term(term, grad):
    return grad.at[index[term]].add(weight[term][..., None] * output_grad)

  grad = jax.lax.fori_loop(0, index.shape[0], add_term, jnp.zeros(shape, dtype))
  return grad.astype(dtype_carrier.dtype), None, None


_weighted_gather.defvjp(_weighted_gather_forward, _weighted_gather_backward)


def roi_align(features: jax.Array, boxes: jax.Array, output_size: int, spatial_scale: float,
              sampling_ratio: int, aligned: bool, max_sampling_ratio: int = 0,
              sum_in_loop: bool = False) -> jax.Array:
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
    sum_in_loop: under differentiation, add each bin's terms in a loop (module
      docstring); the same values.

  Returns:
    [R, S, S, C] in features.dtype, the mean of the G x G bilinear samples of each bin;
    reverse-mode differentiable in `features`, not in `boxes`.
  """
  _check_sampling(sampling_ratio, max_sampling_ratio)
  geometry = roi_levels.single_level_geometry(features, boxes.shape[0], spatial_scale)
  return _roi_align_flat(geometry[0], boxes, output_size, sampling_ratio, aligned,
                         *geometry[1:], max_sampling_ratio=max_sampling_ratio,
                         sum_in_loop=sum_in_loop)


def _check_sampling(sampling_ratio: int, max_sampling_ratio: int) -> None:
  if sampling_ratio < 0:
    raise ValueError(f'sampling_ratio must be > 0 (static grid) or 0 (adaptive), got '
                     f'{sampling_ratio}')
  if sampling_ratio == 0 and max_sampling_ratio < 1:
    raise ValueError('adaptive sampling (sampling_ratio 0) needs max_sampling_ratio >= 1, '
                     f'got {max_sampling_ratio}')


def multilevel_roi_align(features: Sequence[jax.Array], boxes: jax.Array, output_size: int,
                         sampling_ratio: int, aligned: bool, min_level: int = 2,
                         max_sampling_ratio: int = 0, sum_in_loop: bool = False
                         ) -> jax.Array:
  """torchvision MultiScaleRoIAlign: RoIAlign from each box's assigned FPN level.

  Args:
    features: per level [B, H_l, W_l, C] for levels min_level.. (level l has stride 2**l).
    boxes: [B, R, 4] float32 x1y1x2y2 image pixels (zero boxes of padding go to min_level).
    output_size: S.
    sampling_ratio: G > 0, or 0: adaptive (see roi_align).
    aligned: see roi_align.
    min_level: level of features[0].
    max_sampling_ratio: the adaptive grid's cap (see roi_align).
    sum_in_loop: see roi_align.

  Returns:
    [B, R, S, S, C] in the features' dtype.
  """
  _check_sampling(sampling_ratio, max_sampling_ratio)
  op = lambda flat, b, *geometry: _roi_align_flat(flat, b, output_size, sampling_ratio,
                                                  aligned, *geometry,
                                                  max_sampling_ratio=max_sampling_ratio,
                                                  sum_in_loop=sum_in_loop)
  return roi_levels.multilevel(op, features, boxes, min_level)
