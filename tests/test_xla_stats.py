"""xla_stats against programs whose FLOPs and loops are known, and the model's own loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.data import examples
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.runtime import distributed
from maskrcnn_jax.runtime import program_stats
from maskrcnn_jax.train import step as step_lib
from tests.conftest import load_config


def test_counts_matmul_flops_and_classifies_loops():
  def program(a, b, x):
    product = a @ b  # 2 * 64 * 32 * 16 FLOPs
    fixed = jax.lax.fori_loop(0, 7, lambda i, c: c * 1.5, x)  # trip count 7
    # Runs until the data says stop: no trip count XLA can know.
    _, data_dependent = jax.lax.while_loop(lambda c: c[1].sum() < 100.0,
                                           lambda c: (c[0] + 1, c[1] * 2.0), (0, x))
    return product, fixed, data_dependent

  args = (jnp.ones((64, 32)), jnp.ones((32, 16)), jnp.ones((8,)))
  stats = program_stats.compiled_stats(jax.jit(program).lower(*args).compile())
  assert stats.flops >= 2 * 64 * 32 * 16
  assert stats.flops < 2 * 64 * 32 * 16 + 1000  # the loops add a few elementwise ops
  assert sorted((loop.trip_count is None) for loop in stats.while_loops) == [False, True]
  assert [loop.trip_count for loop in stats.while_loops if loop.trip_count] == [7]
  assert (stats.static_loops, stats.dynamic_loops) == (1, 1)
  assert stats.argument_bytes == (64 * 32 + 32 * 16 + 8) * 4
  assert stats.to_dict()['while_loops_dynamic_trip_count'] == 1


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


@pytest.mark.slow
def test_train_step_and_inference_have_no_data_dependent_loop():
  """On XLA:GPU each iteration of a data-dependent loop waits for the host (NMS included)."""
  config = load_config('tiny')
  config.train.batch_size = 2
  model = mask_rcnn.MaskRCNN(config.model)
  height, width = config.data.image_size
  batch = examples.empty_batch(2, config.data)
  info = batch['image_info']
  info[:, :3] = [height, width, 1.0]
  variables = step_lib.init_variables(model, (height, width), jax.random.key(0))
  forward = jax.jit(model.apply).lower(variables, batch['images'], info).compile()
  assert program_stats.compiled_stats(forward).dynamic_loops == 0

  mesh = distributed.data_mesh()
  model, optimizer, state = step_lib.create_train_state(config, jax.random.key(0))
  step = step_lib.jit_train_step(model, optimizer, config.train, mesh)
  batch['gt_boxes'][:, 0] = [4, 4, 40, 40]
  batch['gt_classes'][:, 0] = 1
  batch = jax.tree.map(np.asarray, batch)
  stats = program_stats.compiled_stats(step.lower(state, batch, jax.random.key(1)).compile())
  assert stats.dynamic_loops == 0, [l.op_name for l in stats.while_loops if not l.trip_count]
  assert stats.static_loops >= 1  # the NMS rounds
  assert stats.flops > 0 and stats.temp_bytes > 0
