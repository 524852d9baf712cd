"""Where each layer's parameter gradients are computed in the backward pass.

`layer_boundary(inputs, kernel, bias)` is the identity on a layer's operands, placed
between them and the layer's conv or matmul. Under differentiation, where
`xla_options.order_layer_gradients()` chooses it, its VJP ties the three cotangents
together with terms that are exactly zero:

- the input gradient gets 0 * tanh(first element of the kernel and bias gradients), so
  the backward pass goes on below a layer only once that layer's own parameter
  gradients exist, as in PyTorch's autograd. Without it XLA:CPU's scheduler leaves the
  bias gradients (and some kernel gradients) to the end of the step, where the
  optimizer reads them, and holds every cotangent they reduce until then;
- the kernel gradient gets 0 * tanh(first element of the input gradient), so the
  optimizer's update of a donated kernel depends on the backward pass's read of that
  kernel (the input-gradient conv). XLA's copy insertion, which runs before scheduling,
  otherwise cannot prove that the in-place update comes after that read, and copies
  every trainable kernel at its first use and holds the copy to the end of the step.

The tanh keeps the tie a scalar of its own: XLA does not fuse an expensive op into the
consumers that broadcast it, so the update reads one float, not the whole input
gradient, and the input gradient is freed where the backward pass is done with it.
For finite gradients the ties change no value (x + 0 * tanh(s) == x); a NaN spreads to
the layer's other gradients, which a NaN loss already has. XLA may fuse the reductions
next to a tie differently, so a sum can come out in its last bits (docs/benchmarks.md,
session 9).

`promote_dtype` is Flax's own with the boundary appended, for the `promote_dtype`
attribute of nn.Conv, nn.Dense and nn.ConvTranspose.
"""

import jax
import jax.numpy as jnp
from flax.linen import dtypes as flax_dtypes

from maskrcnn_jax import xla_options


@jax.custom_vjp
def layer_boundary(inputs: jax.Array, kernel: jax.Array, bias: jax.Array | None
                   ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """The identity on (inputs [..., C_in], kernel [..., C_in, C_out], bias [C_out] or None)."""
  return inputs, kernel, bias


def _boundary_forward(inputs, kernel, bias):
  outputs = (inputs.value, kernel.value, None if bias is None else bias.value)
  # The residual's structure says whether gradients flow into `inputs` at all: jax
  # hands the backward an input gradient either way, and tying to one that nothing
  # needs (a frozen stage's output) would keep its conv alive.
  return outputs, (() if inputs.perturbed else None)


def _zero_tie(value: jax.Array, dtype) -> jax.Array:
  """0 * tanh(first element of `value`), a scalar of `dtype`: 0 for finite values."""
  return (0 * jnp.tanh(value.reshape(-1)[0])).astype(dtype)


def _boundary_backward(inputs_perturbed, cotangents):
  # Symbolic zeros (a cotangent nothing produced) come back as None: jax reads None as zero.
  inputs_grad, kernel_grad, bias_grad = (
      None if c is None or isinstance(c, jax.custom_derivatives.SymbolicZero) else c
      for c in cotangents)
  if inputs_perturbed is None:
    inputs_grad = None
  if inputs_grad is None or not xla_options.order_layer_gradients():
    return inputs_grad, kernel_grad, bias_grad
  if kernel_grad is not None:
    kernel_grad = kernel_grad + _zero_tie(inputs_grad, kernel_grad.dtype)
  for grad in (kernel_grad, bias_grad):
    if grad is not None:
      inputs_grad = inputs_grad + _zero_tie(grad, inputs_grad.dtype)
  return inputs_grad, kernel_grad, bias_grad


layer_boundary.defvjp(_boundary_forward, _boundary_backward, symbolic_zeros=True)


def promote_dtype(*args, dtype=None, inexact: bool = True) -> list:
  """Flax's `promote_dtype` of (inputs, kernel, bias), then `layer_boundary`."""
  inputs, kernel, bias = flax_dtypes.promote_dtype(*args, dtype=dtype, inexact=inexact)
  return list(layer_boundary(inputs, kernel, bias))
