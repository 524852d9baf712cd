"""What XLA makes of our programs, in one place: these assertions read the compiled
program (its HLO text, memory plan and cost analysis), so they can change with the XLA
version where the others cannot."""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.data import examples
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.ops import roi_align as roi_ops
from maskrcnn_jax.runtime import compiler
from maskrcnn_jax.runtime import distributed
from maskrcnn_jax.runtime import program_stats
from maskrcnn_jax.train import step as step_lib
from tests.conftest import load_config

needs_cpu = pytest.mark.skipif(jax.default_backend() != 'cpu', reason='XLA:CPU options')


def test_training_gradient_never_holds_the_neighbour_tensor():
  """Temp memory of the RoIAlign gradient stays a few [R, S, S, C] outputs, far below the
  [R, S, G, S, G, 4, C] tensor of all bilinear neighbours (16 outputs at G = 2)."""
  rois, size, ratio, channels = 64, 7, 2, 32
  rng = np.random.default_rng(7)
  pyramid = [jnp.asarray(rng.normal(size=(1, 64 // 2**l, 64 // 2**l, channels)), jnp.float32)
             for l in range(4)]
  corners = rng.uniform(0, 200, (1, rois, 2))
  boxes = jnp.asarray(np.concatenate([corners, corners + rng.uniform(4, 56, (1, rois, 2))],
                                     -1), jnp.float32) / 4

  def loss(features):
    return jnp.sum(roi_ops.multilevel_roi_align(features, boxes, size, ratio, True) ** 2)

  compiled = jax.jit(jax.grad(loss)).lower(pyramid).compile()
  output_bytes = rois * size * size * channels * 4
  neighbour_bytes = output_bytes * ratio * ratio * 4
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < neighbour_bytes / 2, (temp, neighbour_bytes)


def _conv_value_and_grads(x, w):
  def loss(x, w):
    y = lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.sum(jnp.sin(y))
  return jax.value_and_grad(loss, argnums=(0, 1))(x, w)


def _ynn_convolutions(hlo: str) -> list[str]:
  """The YNNPACK fusions of a compiled module that compute a convolution."""
  return [line for line in hlo.splitlines()
          if '= ' in line and 'ynn_fusion' in line.split('=')[0]
          and 'conv_general_dilated' in line]


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
