"""benchmarks/tpu_aot.py: the tiny config's train step and inference compile for a TPU v5e
slice with no TPU present (libtpu's compiler), with no data-dependent loop, no host
transfer, TPU's op forms, and each chip of the data-parallel forward doing one chip's
share. Skipped where libtpu is not installed (`pip install -e '.[tpu]'`)."""

import importlib.util

import jax
import numpy as np
import pytest

from benchmarks import model_step
from benchmarks import tpu_aot
from maskrcnn_jax.data import examples
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.train import step as step_lib

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec('libtpu') is None,
                       reason="libtpu is not installed: pip install -e '.[tpu]'"),
]

BATCH_PER_CHIP = 2


@pytest.fixture(scope='module')
def config():
  return model_step.load_case_config('configs/tiny.py', 'train', BATCH_PER_CHIP, None,
                                     'float32')


def _nbytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def test_train_step_compiles_for_tpu_with_static_loops_and_no_host_transfer(config):
  result, _ = tpu_aot.compile_program(config, 'train', 'v5e', BATCH_PER_CHIP)
  assert result['chips'] == 4 and result['topology'] == 'v5e:2x2'
  assert result['while_loops_dynamic_trip_count'] == 0, result['dynamic_loop_op_names']
  assert result['host_transfers'] == 0
  # TPU's RoIAlign form: each pooler's forward sum unrolled, so the loops of G * G * 4
  # = 16 terms are the two gradients' scatter-adds only (the CPU form adds two more).
  assert sorted(result['while_loop_trip_counts']) == [16, 16, 32]  # + the RPN's NMS
  # The replicated state (params, momentum, step) and a chip's share of the batch are
  # arguments, each at least its logical size; the donated state aliases the output.
  model = step_lib.training_model(config, 'tpu')
  variables = jax.eval_shape(lambda key: step_lib.init_variables(model, (64, 64), key),
                             jax.random.key(0))
  params_bytes = _nbytes(variables['params'])
  batch_bytes = _nbytes(examples.empty_batch(BATCH_PER_CHIP, config.data))
  assert result['hbm_argument_bytes'] >= 2 * params_bytes + batch_bytes
  assert result['hbm_alias_bytes'] >= 2 * params_bytes
  assert result['fits_hbm'] and result['hbm_total_bytes'] < 16 * 2**30
  assert result['gflops_per_image'] > 0 and result['roofline_images_per_s'] > 0


def test_inference_compiles_for_tpu_and_each_chip_computes_its_share(config):
  """The forward split over 4 chips does per chip what the exported forward does for one
  chip's 2 images: the same FLOPs; both with only counted loops and no host transfer."""
  sharded, _ = tpu_aot.compile_program(config, 'infer', 'v5e', BATCH_PER_CHIP)
  exported, _ = tpu_aot.compile_program(config, 'export', 'v5e', BATCH_PER_CHIP)
  assert sharded['chips'] == 4 and exported['chips'] == 1
  for result in (sharded, exported):
    assert result['while_loops_dynamic_trip_count'] == 0, result['dynamic_loop_op_names']
    assert result['host_transfers'] == 0
    assert sorted(result['while_loop_trip_counts']) == [100, 1000]  # the two NMS
  assert sharded['flops'] == pytest.approx(exported['flops'], rel=0.01)
  # The exported program holds the weights as constants, the sharded one as arguments.
  model = mask_rcnn.MaskRCNN(config.model)
  variables = jax.eval_shape(lambda key: step_lib.init_variables(model, (64, 64), key),
                             jax.random.key(0))
  assert sharded['hbm_argument_bytes'] >= _nbytes(variables)
  assert exported['hbm_argument_bytes'] < _nbytes(variables)
