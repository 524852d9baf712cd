"""runtime/program_stats.py: the while loops of HLO text, with and without trip counts."""

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
