"""Tests for maskrcnn_jax.ops.conv: kernel gradients against a NumPy loop and lax's own."""

import functools

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from maskrcnn_jax.ops import conv as conv_ops
from tests.conftest import run_on_eight_cpu_devices

NHWC = ('NHWC', 'HWIO', 'NHWC')


def kernel_gradient_reference(inputs, output_grad, kernel_size, padding):
  """dL/dkernel of a stride-1 NHWC conv from its definition, tap by tap, in float64."""
  (top, bottom), (left, right) = padding
  x = np.pad(np.asarray(inputs, np.float64), ((0, 0), (top, bottom), (left, right), (0, 0)))
  dy = np.asarray(output_grad, np.float64)
  _, out_height, out_width, _ = dy.shape
  kh, kw = kernel_size
  grad = np.zeros((kh, kw, x.shape[-1], dy.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      window = x[:, i:i + out_height, j:j + out_width]  # input cells tap (i, j) reads
      grad[i, j] = np.einsum('nyxc,nyxd->cd', window, dy)
  return grad


@pytest.mark.parametrize('kernel_size, padding, input_shape', [
    ((3, 3), ((1, 1), (1, 1)), (2, 7, 5, 3)),
    ((1, 1), ((0, 0), (0, 0)), (3, 4, 6, 5)),
    ((3, 1), ((0, 2), (1, 0)), (1, 6, 4, 2)),  # asymmetric padding, output != input size
    ((5, 3), ((2, 2), (1, 1)), (2, 9, 8, 4)),
])
def test_kernel_gradient_matches_definition(kernel_size, padding, input_shape):
  rng = np.random.default_rng(0)
  inputs = rng.normal(size=input_shape).astype(np.float32)
  (top, bottom), (left, right) = padding
  out_shape = (input_shape[0], input_shape[1] + top + bottom - kernel_size[0] + 1,
               input_shape[2] + left + right - kernel_size[1] + 1, 4)
  output_grad = rng.normal(size=out_shape).astype(np.float32)
  got = jax.jit(conv_ops.kernel_gradient, static_argnums=(2, 3))(
      inputs, output_grad, kernel_size, padding)
  np.testing.assert_allclose(got, kernel_gradient_reference(inputs, output_grad, kernel_size,
                                                             padding), rtol=1e-5, atol=1e-5)


def _loss(conv, x, w, strides, padding, **kwargs):
  y = conv(x, w, strides, padding, dimension_numbers=kwargs.pop('dimension_numbers', NHWC),
           **kwargs)
  return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size)


@pytest.mark.parametrize('padding', ['SAME', 'VALID', ((1, 1), (1, 1)), ((0, 1), (2, 0))])
def test_values_and_gradients_equal_lax(padding):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 8, 6, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 3, 5)) * 0.3, jnp.float32)
  ours = functools.partial(_loss, conv_ops.conv_general_dilated)
  theirs = functools.partial(_loss, lax.conv_general_dilated)
  np.testing.assert_allclose(ours(x, w, (1, 1), padding), theirs(x, w, (1, 1), padding),
                             rtol=1e-6)
  ours_grad = jax.jit(jax.grad(ours, argnums=(0, 1)), static_argnums=(2, 3))(
      x, w, (1, 1), padding)
  theirs_grad = jax.grad(theirs, argnums=(0, 1))(x, w, (1, 1), padding)
  for got, want in zip(ours_grad, theirs_grad):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('case', ['stride', 'dilation', 'groups', 'nchw'])
def test_other_convolutions_are_lax_unchanged(case):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 4, 4)), jnp.float32)
  strides, kwargs = (1, 1), {}
  if case == 'stride':
    strides = (2, 2)
  elif case == 'dilation':
    kwargs['rhs_dilation'] = (2, 2)
  elif case == 'groups':
    w, kwargs['feature_group_count'] = w[:, :, :2], 2
  else:
    x, w = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
    kwargs['dimension_numbers'] = ('NCHW', 'OIHW', 'NCHW')
  grads = [jax.grad(functools.partial(_loss, conv, strides=strides, padding='SAME', **kwargs),
                    argnums=(0, 1))(x, w)
           for conv in (conv_ops.conv_general_dilated, lax.conv_general_dilated)]
  for got, want in zip(*grads):
    np.testing.assert_array_equal(got, want)


def test_bfloat16_kernel_gradient_keeps_the_kernel_dtype():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 6, 6, 8)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(3, 3, 8, 8)) * 0.2, jnp.bfloat16)
  grad = jax.grad(lambda w: jnp.sum(conv_ops.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=NHWC).astype(jnp.float32)))(w)
  assert grad.dtype == jnp.bfloat16
  want = kernel_gradient_reference(x.astype(jnp.float32), np.ones((2, 6, 6, 8)), (3, 3),
                                   ((1, 1), (1, 1)))
  np.testing.assert_allclose(np.asarray(grad, np.float32), want, rtol=1e-2, atol=1e-1)


def test_conv_function_choices():
  assert conv_ops.conv_function('xla') is lax.conv_general_dilated
  assert conv_ops.conv_function('gemm') is conv_ops.conv_general_dilated
  auto = conv_ops.conv_function('auto')
  if jax.default_backend() != 'cpu':
    assert auto is lax.conv_general_dilated
  else:  # the kernel-gradient route only for convs with enough channels and cells
    assert (conv_ops.AUTO_MIN_CHANNELS, conv_ops.AUTO_MIN_CELLS) == (128, 4096)
    for x_shape, out_channels, route in (((1, 64, 64, 128), 128, 'gemm'),
                                         ((1, 64, 64, 128), 64, 'lax'),
                                         ((4, 31, 33, 128), 128, 'lax')):
      x = jnp.ones(x_shape)
      w = jnp.ones((3, 3, 128, out_channels))
      jaxpr = str(jax.make_jaxpr(
          lambda w: auto(x, w, (1, 1), 'SAME', dimension_numbers=NHWC))(w))
      assert ('custom_vjp_call' in jaxpr) == (route == 'gemm'), jaxpr
  with pytest.raises(ValueError, match=r"conv weight_grad must be one of .*'fast'"):
    conv_ops.conv_function('fast')


_SHARDED = '''
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from maskrcnn_jax.ops import conv as conv_ops
assert jax.device_count() == 8
rng = np.random.default_rng(4)
x = rng.normal(size=(8, 6, 5, 4)).astype(np.float32)
w = rng.normal(size=(3, 3, 4, 3)).astype(np.float32)
def loss(x, w):
  y = conv_ops.conv_general_dilated(x, w, (1, 1), 'SAME',
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jnp.sum(jnp.sin(y))
grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
mesh = Mesh(np.array(jax.devices()), ('data',))
sharded = grad(jax.device_put(x, NamedSharding(mesh, P('data'))),
               jax.device_put(w, NamedSharding(mesh, P())))
single = grad(jax.device_put(x, jax.devices()[0]), jax.device_put(w, jax.devices()[0]))
for a, b in zip(sharded, single):
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
print('ok')
'''


def test_batch_sharded_over_eight_devices_gives_the_same_gradients():
  run_on_eight_cpu_devices(_SHARDED, timeout=300)
