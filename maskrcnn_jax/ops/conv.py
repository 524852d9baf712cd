"""Convolution whose kernel gradient is a sum of plain matrix products (fast on XLA:CPU).

XLA:CPU computes a 3x3 convolution's kernel gradient about 3x slower than the forward
pass (R50-FPN at 512x512: the RPN and mask head convs spend ~0.5 s each on it per step).
For a stride-1 convolution the kernel gradient is, per tap (i, j),

  dkernel[i, j] = sum over n, y, x of  x_padded[n, y + i, x + j, :]^T  dy[n, y, x, :],

and with the padded input flattened to rows [N * Hp * Wp, C_in] and dy laid on the same
padded grid (zeros past its edge), tap (i, j) is the contiguous row block starting at
i * Wp + j of each image: kh * kw GEMMs of [C_in, rows] @ [rows, C_out], no strided
window copies.

`conv_general_dilated` has lax.conv_general_dilated's signature (for flax.linen.Conv's
`conv_general_dilated=`); it takes that route for NHWC inputs, HWIO kernels, stride 1,
no dilation, one feature group, and otherwise calls lax.conv_general_dilated unchanged.
Its forward pass and input gradient are lax's own. With few channels the products are
long and thin, and with few cells the padding and transposes dominate; there lax's
gradient is as fast or faster (32 channels: 0.8-1.2x), so 'auto' routes only convs
with at least AUTO_MIN_CHANNELS input and output channels and AUTO_MIN_CELLS cells.
"""

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

_DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')
WEIGHT_GRADS = ('auto', 'xla', 'gemm')
# 3x3 kernel gradient on XLA:CPU, 2 cores: 128 channels 1.4-2.1x faster, 256 1.4-3.3x
# (from 4,096 cells up); 128 channels over 8 x 16 x 16 cells 0.6x.
AUTO_MIN_CHANNELS = 128
AUTO_MIN_CELLS = 4096  # N * H * W of the input


def _nhwc_conv(inputs: jax.Array, kernel: jax.Array, padding: tuple, precision) -> jax.Array:
  return lax.conv_general_dilated(inputs, kernel, (1, 1), padding,
                                  dimension_numbers=_DIMENSION_NUMBERS, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_gemm_kernel_grad(inputs, kernel, padding, precision):
  return _nhwc_conv(inputs, kernel, padding, precision)


def _forward(inputs, kernel, padding, precision):
  return _nhwc_conv(inputs, kernel, padding, precision), (inputs, kernel)


def kernel_gradient(inputs: jax.Array, output_grad: jax.Array, kernel_size: tuple[int, int],
                    padding: tuple) -> jax.Array:
  """Gradient of a stride-1 NHWC convolution's loss with respect to its HWIO kernel.

  Args:
    inputs: [N, H, W, C_in].
    output_grad: [N, Ho, Wo, C_out], Ho = H + pad_top + pad_bottom - kh + 1 (same for W).
    kernel_size: (kh, kw).
    padding: ((pad_top, pad_bottom), (pad_left, pad_right)), each >= 0.

  Returns:
    [kh, kw, C_in, C_out] in the kernel's dtype family (float32 accumulation).
  """
  n, height, width, in_channels = inputs.shape
  _, out_height, out_width, out_channels = output_grad.shape
  kh, kw = kernel_size
  (top, bottom), (left, right) = padding
  padded_height, padded_width = height + top + bottom, width + left + right
  cells = padded_height * padded_width
  # Grid cells lead and images follow ([cells, N, C]): every tap is one contiguous block
  # of rows, and the batch axis, which may be sharded, is never sliced. Trailing zero
  # cells keep the last tap's block in range.
  x = jnp.pad(inputs, ((0, 0), (top, bottom), (left, right), (0, 0)))
  x = jnp.pad(x.reshape(n, cells, in_channels).transpose(1, 0, 2),
              ((0, (kh - 1) * padded_width + kw - 1), (0, 0), (0, 0)))
  dy = jnp.pad(output_grad, ((0, 0), (0, padded_height - out_height),
                             (0, padded_width - out_width), (0, 0)))
  dy = dy.reshape(n, cells, out_channels).transpose(1, 0, 2)
  dy = dy.reshape(cells * n, out_channels)
  taps = [jnp.dot(lax.dynamic_slice_in_dim(x, i * padded_width + j, cells, 0)
                  .reshape(cells * n, in_channels).T, dy, preferred_element_type=jnp.float32)
          for i in range(kh) for j in range(kw)]
  return jnp.stack(taps).reshape(kh, kw, in_channels, out_channels)


def _backward(padding, precision, residuals, output_grad):
  inputs, kernel = residuals
  _, input_vjp = jax.vjp(lambda x: _nhwc_conv(x, kernel, padding, precision), inputs)
  input_grad, = input_vjp(output_grad)
  kernel_grad = kernel_gradient(inputs, output_grad, kernel.shape[:2], padding)
  return input_grad, kernel_grad.astype(kernel.dtype)


_conv_gemm_kernel_grad.defvjp(_forward, _backward)


def _explicit_padding(padding, inputs_shape, kernel_shape) -> tuple | None:
  """((top, bottom), (left, right)) for stride 1, or None where a side is negative."""
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(inputs_shape[1:3], kernel_shape[:2], (1, 1), padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return pads if min(min(p) for p in pads) >= 0 else None


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]], lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None,
                         min_channels=0, min_cells=0) -> jax.Array:
  """lax.conv_general_dilated, with `kernel_gradient` as the kernel's VJP where it applies.

  Convs with fewer than `min_channels` input or output channels, or fewer than
  `min_cells` input cells (N * H * W), keep lax's gradient.
  """
  plain = (tuple(window_strides) == (1, 1) and lhs.ndim == 4 and rhs.ndim == 4
           and min(rhs.shape[2:]) >= min_channels and math.prod(lhs.shape[:3]) >= min_cells
           and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
           and feature_group_count == 1 and batch_group_count == 1
           and preferred_element_type is None
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
           == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DIMENSION_NUMBERS))
  pads = _explicit_padding(padding, lhs.shape, rhs.shape) if plain else None
  if pads is None:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
  return _conv_gemm_kernel_grad(lhs, rhs, pads, precision)


_conv_auto_on_cpu = functools.partial(conv_general_dilated, min_channels=AUTO_MIN_CHANNELS,
                                      min_cells=AUTO_MIN_CELLS)


def conv_function(weight_grad: str) -> Callable[..., jax.Array]:
  """The convolution for flax.linen.Conv's `conv_general_dilated=`.

  Args:
    weight_grad: 'xla' (lax's own gradient), 'gemm' (`conv_general_dilated` above) or
      'auto' (where JAX's default backend is the CPU, 'gemm' for convs with at least
      AUTO_MIN_CHANNELS channels and AUTO_MIN_CELLS cells; else 'xla').
  """
  if weight_grad not in WEIGHT_GRADS:
    raise ValueError(f'conv weight_grad must be one of {WEIGHT_GRADS}; got {weight_grad!r}')
  if weight_grad == 'gemm':
    return conv_general_dilated
  if weight_grad == 'auto' and jax.default_backend() == 'cpu':
    return _conv_auto_on_cpu
  return lax.conv_general_dilated
