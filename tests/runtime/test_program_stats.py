"""runtime/program_stats.py: the while loops of HLO text, with and without trip counts;
custom calls, host transfers and the memory plan of compiled programs."""

import jax
import jax.numpy as jnp
import numpy as np

from maskrcnn_jax.runtime import program_stats


def test_parses_while_lines_of_hlo_text():
  text = '\n'.join([
      '  %w.1 = (s32[], f32[3]{0}) while(%t), condition=%c, body=%b, '
      'metadata={op_name="jit(f)/while"}, backend_config={"known_trip_count":{"n":"12"}}',
      '  ROOT %w.2 = (s32[], f32[3]{0}) while(%t2), condition=%c2, body=%b2, '
      'metadata={op_name="jit(f)/nms/while"}',
      '  %x = f32[3]{0} add(%a, %b), metadata={op_name="jit(f)/while_like_name"}',
  ])
  loops = program_stats.while_loops(text)
  assert loops == (program_stats.WhileLoop('jit(f)/while', 12),
                   program_stats.WhileLoop('jit(f)/nms/while', None))


def test_reads_the_trip_count_from_a_counter_condition_as_xla_tpu_writes_it():
  """XLA:TPU drops known_trip_count; a `counter < constant(N)` condition bounds the loop,
  any other condition is data-dependent."""
  text = '\n'.join([
      '%cond.1 (p: (s32[], f32[3])) -> pred[] {',
      '  %constant.7 = s32[]{:T(128)} constant(32)',
      '  %p = (s32[]{:T(128)}, f32[3]{0}) parameter(0)',
      '  %gte = s32[]{:T(128)} get-tuple-element(%p), index=0',
      '  ROOT %lt.9 = pred[]{:T(512)} compare(%gte, %constant.7), direction=LT, '
      'metadata={op_name="jit(f)/while/cond/lt"}',
      '}',
      '',
      '%cond.2 (p: (s32[], f32[3])) -> pred[] {',
      '  %p = (s32[]{:T(128)}, f32[3]{0}) parameter(0)',
      '  %gte = s32[]{:T(128)} get-tuple-element(%p), index=0',
      '  %gte.1 = s32[]{:T(128)} get-tuple-element(%p), index=1',
      '  ROOT %lt.3 = pred[]{:T(512)} compare(%gte, %gte.1), direction=LT',
      '}',
      '',
      'ENTRY %main (a: f32[3]) -> f32[3] {',
      '  %w.1 = (s32[]{:T(128)}, f32[3]{0}) while(%t), condition=%cond.1, body=%b, '
      'metadata={op_name="jit(f)/while"}',
      '  %w.2 = (s32[]{:T(128)}, f32[3]{0}) while(%t), condition=%cond.2, body=%b, '
      'metadata={op_name="jit(f)/nms/while"}',
      '}',
  ])
  assert program_stats.while_loops(text) == (
      program_stats.WhileLoop('jit(f)/while', 32),
      program_stats.WhileLoop('jit(f)/nms/while', None))


def _compiled(fun, *args):
  return jax.jit(fun).lower(*args).compile()


def test_counts_host_transfers_and_custom_calls_of_compiled_programs():
  x = jnp.arange(4.0)
  plain = _compiled(lambda v: jnp.sort(v) * 2, x)
  callback = _compiled(lambda v: jax.pure_callback(
      lambda a: np.asarray(a) * 2, jax.ShapeDtypeStruct((4,), jnp.float32), v), x)
  assert program_stats.host_transfers(plain.as_text()) == 0
  assert program_stats.host_transfers(callback.as_text()) >= 1
  calls = program_stats.custom_calls(callback.as_text())
  assert sum(n for target, n in calls.items() if 'callback' in target) == 1


def test_accelerator_stats_of_a_cpu_program_add_up():
  """Memory from the plan, FLOPs of a matmul (2 * m * n * k), loops classified."""
  a, b = jnp.ones((64, 32)), jnp.ones((32, 16))

  def f(a, b):
    counted = jax.lax.fori_loop(0, 5, lambda i, c: c + 1.0, a @ b)
    return jax.lax.while_loop(lambda c: c.sum() < 1e6, lambda c: c * 2.0, counted)

  compiled = _compiled(f, a, b)
  stats = program_stats.accelerator_stats(compiled)
  memory = compiled.memory_analysis()
  assert stats['hbm_argument_bytes'] == (64 * 32 + 32 * 16) * 4
  assert stats['hbm_output_bytes'] == 64 * 16 * 4
  assert stats['hbm_total_bytes'] == (memory.argument_size_in_bytes
                                      + memory.output_size_in_bytes
                                      + memory.temp_size_in_bytes
                                      + memory.generated_code_size_in_bytes
                                      - memory.alias_size_in_bytes)
  assert stats['flops'] >= 2 * 64 * 16 * 32
  assert stats['while_loops_dynamic_trip_count'] == 1
  assert stats['host_transfers'] == 0
