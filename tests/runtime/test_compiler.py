"""runtime/compiler.py: options a jaxlib rejects are dropped with a warning; other
platforms get no options and the unrolled RoIAlign, chosen by the platform a program is
compiled for, not the process's default backend. (What the CPU options do to the
compiled program: test_compiled_programs.py.)"""

import logging

import jax

from maskrcnn_jax.runtime import compiler


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


def test_choices_follow_the_platform_compiled_for_not_the_default_backend():
  """A CPU process compiling for TPU devices gets TPU choices, and the reverse."""
  assert compiler.compiler_options('tpu') is None
  assert not compiler.roi_align_sum_in_loop('tpu')
  assert compiler.roi_align_sum_in_loop('cpu')
  mesh = jax.make_mesh((1,), ('data',))
  assert compiler.mesh_platform(mesh) == jax.default_backend()
