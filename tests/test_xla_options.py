"""maskrcnn_jax.xla_options: on the CPU, convolutions leave YNNPACK with the same results;
other backends get no options."""

import logging

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.runtime import compiler

needs_cpu = pytest.mark.skipif(jax.default_backend() != 'cpu', reason='XLA:CPU options')


def _conv_value_and_grads(x, w):
  def loss(x, w):
    y = lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.sum(jnp.sin(y))
  return jax.value_and_grad(loss, argnums=(0, 1))(x, w)


def _ynn_convolutions(hlo: str) -> list[str]:
  """The YNNPACK fusions of a compiled module that compute a convolution."""
  return [line for line in hlo.splitlines()
          if '= ' in line and 'ynn_fusion' in line.split('=')[0] and 'conv_general_dilated' in line]


@needs_cpu
def test_cpu_convolutions_compile_outside_ynnpack_with_the_same_results():
  options = compiler.compiler_options()
  assert options == compiler.CPU_OPTIONS
  rng = np.random.default_rng(0)
  # Large enough that the default options send the convolutions to YNNPACK.
  x = jnp.asarray(rng.normal(size=(8, 14, 14, 256)) * 0.1, jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 256, 256)) * 0.02, jnp.float32)
  default = jax.jit(_conv_value_and_grads).lower(x, w).compile()
  ours = compiler.jit(_conv_value_and_grads).lower(x, w).compile()
  assert _ynn_convolutions(default.as_text())
  assert not _ynn_convolutions(ours.as_text()) and ' convolution(' in ours.as_text()
  for got, want in zip(jax.tree.leaves(ours(x, w)), jax.tree.leaves(default(x, w))):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-4)


def test_options_a_jaxlib_rejects_are_dropped_with_a_warning(monkeypatch, caplog):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  monkeypatch.setattr(compiler, 'CPU_OPTIONS',
                      {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_NO_SUCH'})
  compiler._cpu_options_compile.cache_clear()  # pylint: disable=protected-access
  try:
    with caplog.at_level(logging.WARNING):
      assert compiler.compiler_options() is None
    assert 'LIBRARY_FUSION_TYPE_NO_SUCH' in caplog.text and 'not accepted' in caplog.text
  finally:
    compiler._cpu_options_compile.cache_clear()  # pylint: disable=protected-access


def test_other_backends_get_no_options_and_the_unrolled_roi_align(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert compiler.compiler_options() is None
  assert not compiler.roi_align_sum_in_loop()
