"""maskrcnn_jax.model.gradient_order: the same gradients, each layer's parameter gradients
where its backward runs, and no copies of the donated kernels."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maskrcnn_jax import xla_options
from maskrcnn_jax.model import gradient_order
from maskrcnn_jax.model import roi_heads
from tests.conftest import compile_and_run_train_step
from tests.conftest import r50_tiny_heads_train_case

needs_cpu = pytest.mark.skipif(jax.default_backend() != 'cpu', reason='chosen on XLA:CPU only')


class _Net(nn.Module):
  """conv -> conv -> upsample -> dense, with biases; `ordered` puts the boundaries in."""
  ordered: bool = True

  @nn.compact
  def __call__(self, x):
    promote = {'promote_dtype': gradient_order.promote_dtype} if self.ordered else {}
    for i in range(2):
      x = nn.relu(nn.Conv(64, (3, 3), padding=((1, 1), (1, 1)), name=f'conv{i}', **promote)(x))
    if self.ordered:
      x = nn.relu(roi_heads.Upsample2x(32, name='up')(x))
    else:  # Upsample2x's own arithmetic without the boundary
      kernel = self.param('kernel', nn.initializers.lecun_normal(), (2, 2, 64, 32))
      bias = self.param('bias', nn.initializers.zeros, (32,))
      y = jnp.einsum('nhwc,ijcd->nhiwjd', x, kernel[::-1, ::-1])
      n, h, _, w, _, d = y.shape
      x = nn.relu(y.reshape(n, 2 * h, 2 * w, d) + bias)
    return nn.Dense(8, name='dense', **promote)(x.reshape(x.shape[0], -1))


def _inputs():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(16, 16, 16, 32)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
  return x, target


def _loss(params, x, target, ordered=True):
  return jnp.mean((_Net(ordered).apply(params, x) - target) ** 2)


def _params():
  x, _ = _inputs()
  params = _Net(True).init(jax.random.key(0), x)
  # Upsample2x keeps its params under its own name; the plain net has them at the top.
  plain = {'params': {k: v for k, v in params['params'].items() if k != 'up'}}
  plain['params'].update(params['params']['up'])
  return params, plain


def test_boundary_is_the_identity_with_the_same_gradients(monkeypatch):
  x, target = _inputs()
  params, plain = _params()
  np.testing.assert_array_equal(_Net(True).apply(params, x), _Net(False).apply(plain, x))
  expected_params, expected_x = jax.grad(_loss, argnums=(0, 1))(plain, x, target, False)
  for ordered in (True, False):
    monkeypatch.setattr(xla_options, 'order_layer_gradients', lambda o=ordered: o)
    grads, x_grad = jax.jit(jax.grad(_loss, argnums=(0, 1)))(params, x, target)
    np.testing.assert_array_equal(x_grad, expected_x)
    for leaf in ('kernel', 'bias'):
      np.testing.assert_array_equal(grads['params']['up'][leaf], expected_params['params'][leaf])
    for name in ('conv0', 'conv1', 'dense'):
      for leaf in ('kernel', 'bias'):
        np.testing.assert_array_equal(grads['params'][name][leaf],
                                      expected_params['params'][name][leaf])


def test_boundary_is_the_identity_in_bfloat16():
  x = jnp.ones((2, 4, 4, 8), jnp.bfloat16)
  kernel = jnp.full((3, 3, 8, 16), 0.5, jnp.bfloat16)
  outputs = gradient_order.layer_boundary(x, kernel, None)
  assert outputs[2] is None
  np.testing.assert_array_equal(outputs[0], x)
  np.testing.assert_array_equal(outputs[1], kernel)


def _step(params, opt_state, x, target, optimizer):
  """SGD with momentum and weight decay, as the train step; the first layer's input is data."""
  grads = jax.grad(_loss)(params, x, target)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def _kernel_copies(hlo: str) -> list[str]:
  """Copies of a kernel in a compiled module (XLA's copies of donated buffers)."""
  return re.findall(r'= f32\[[0-9,]+\]\{[0-9,]+\} copy\(%[\w.]*params[\w.]*kernel[\w.]*\)', hlo)


@needs_cpu
def test_donated_step_has_no_kernel_copies_and_less_temp_memory(monkeypatch):
  x, target = _inputs()
  params, _ = _params()
  optimizer = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.01, momentum=0.9))
  results, copies, temp_bytes, convolutions = {}, {}, {}, {}
  for ordered in (True, False):
    monkeypatch.setattr(xla_options, 'order_layer_gradients', lambda o=ordered: o)
    # A new function each time: jax's trace cache would hand back the first trace.
    step = jax.jit(lambda *args: _step(*args), static_argnums=4, donate_argnums=(0, 1),
                   compiler_options=xla_options.compiler_options())
    state = jax.tree.map(jnp.copy, (params, optimizer.init(params)))
    compiled = step.lower(*state, x, target, optimizer).compile()
    hlo = compiled.as_text()
    copies[ordered] = _kernel_copies(hlo)
    temp_bytes[ordered] = compiled.memory_analysis().temp_size_in_bytes
    # The first conv's input is data: no input-gradient conv for it either way.
    convolutions[ordered] = len(re.findall(r' convolution\(', hlo))
    results[ordered] = jax.tree.leaves(compiled(*state, x, target))
  for ordered_leaf, plain_leaf in zip(results[True], results[False]):
    np.testing.assert_array_equal(ordered_leaf, plain_leaf)
  assert not copies[True]
  assert copies[False]
  assert convolutions[True] == convolutions[False]
  # Measured with jax 0.10.2: 9.5 MB against 11.7 MB.
  assert temp_bytes[True] < 0.9 * temp_bytes[False]


def test_inference_has_no_ties():
  x, _ = _inputs()
  params, _ = _params()
  hlo = jax.jit(_Net(True).apply).lower(params, x).as_text()
  assert 'tanh' not in hlo


@pytest.mark.slow
@needs_cpu
def test_train_step_is_the_same_with_less_temp_memory(monkeypatch):
  """The whole train step (R50 under the tiny heads, 256^2), ordered or not."""
  config, batch = r50_tiny_heads_train_case()
  temp_bytes, copies, updates = {}, {}, {}
  for ordered in (True, False):
    monkeypatch.setattr(xla_options, 'order_layer_gradients', lambda o=ordered: o)
    compiled, updates[ordered] = compile_and_run_train_step(config, batch)
    temp_bytes[ordered] = compiled.memory_analysis().temp_size_in_bytes
    copies[ordered] = _kernel_copies(compiled.as_text())
  for ordered_leaf, plain_leaf in zip(updates[True], updates[False]):
    np.testing.assert_array_equal(ordered_leaf, plain_leaf)
  # Measured with jax 0.10.2: no kernel copies against 56, 129.2 MB against 150.8 MB.
  assert not copies[True]
  assert len(copies[False]) > 40
  assert temp_bytes[True] < 0.9 * temp_bytes[False]
