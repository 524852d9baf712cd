"""20 training iterations against Detectron2's own: every loss, the schedule, the final weights.

tests/fixtures/detectron2_trajectory.npz holds 20 iterations of Detectron2's SimpleTrainer
(tests/tools/record_detectron2_trajectory.py): the reduced mask_rcnn_R_50_FPN_1x of
tests/model/test_losses_detectron2.py with its seeded weights, two images, exhaustive
samplers (nothing random), and the 1x solver as Detectron2 builds it (`build_optimizer`,
`build_lr_scheduler`) with the schedule shortened: linear warmup from 1/1000 over 8
iterations, a 10x decay at 14. We run `train.step.train_step` with `make_optimizer` and
`learning_rate_schedule` of configs/detectron2/mask_rcnn_R_50_FPN_1x.py at the same
reductions, base LR and schedule, from the same converted weights, on the same batch.

Term by term, what the test pins:
  learning rate: Detectron2's LRMultiplier value at every iteration, within 1e-6 relative;
  every loss at every iteration within LOSS_RTOL (1e-4) relative: RPN (both divided by
    BATCH_SIZE_PER_IMAGE x images), box head, mask;
  the final trainable weights within PARAM_ATOL (1e-5) absolute, after SGD with momentum
    0.9 and weight decay 1e-4 on weights and biases (no trainable norms in the 1x model:
    its batch norms are frozen);
  FREEZE_AT 2: the stem and res2 weights are unchanged, bit for bit.
Detectron2's mask targets are ours in the recording (the recorder says why); the targets'
own difference at one step is tests/model/test_losses_detectron2.py's.
"""

import functools

import flax
import jax
import numpy as np
import pytest

from maskrcnn_jax import convert
from maskrcnn_jax.model.mask_rcnn import MaskRCNN
from maskrcnn_jax.runtime import compiler
from maskrcnn_jax.train import optimizer as optimizer_lib
from maskrcnn_jax.train import step as step_lib
from tests.conftest import FIXTURES
from tests.conftest import reduced_detectron2_config
from tests.model import test_losses_detectron2 as one_step
from tests.tools import seeded_weights
from tests.tools.detectron2_weights import friendly

pytestmark = pytest.mark.slow  # one compilation of the train step and 20 steps, ~1 min

LOSS_RTOL = 1e-4
PARAM_ATOL = 1e-5
LOSSES = (('rpn_cls', 'loss_rpn_cls'), ('rpn_box', 'loss_rpn_loc'), ('cls', 'loss_cls'),
          ('box', 'loss_box_reg'), ('mask', 'loss_mask'))


@pytest.fixture(scope='module')
def recorded():
  return dict(np.load(FIXTURES / 'detectron2_trajectory.npz'))


def _config(recorded):
  config = one_step._config(recorded)  # the reductions and samplers of the loss test
  m = config.model
  m.rpn.nms_threshold = float(recorded['nms_threshold'])
  t = config.train
  t.base_lr = float(recorded['solver_base_lr'])
  t.warmup_steps = int(recorded['solver_warmup_iters'])
  t.lr_steps = tuple(int(s) for s in recorded['solver_steps'])
  t.num_steps = int(recorded['solver_max_iter'])
  # The 1x recipe's own values, which the test takes from the config, not the fixture.
  assert (t.momentum, t.weight_decay, t.warmup_factor, t.lr_decay, t.grad_clip_norm) == (
      float(recorded['solver_momentum']), float(recorded['solver_weight_decay']),
      float(recorded['solver_warmup_factor']), float(recorded['solver_gamma']), 0.0)
  assert float(recorded['solver_weight_decay_norm']) == 0.0
  assert m.backbone.freeze_at == 2 and m.rpn.loss_normalizer == 'batch_size'
  return config


def _initial_weights(recorded):
  names_and_shapes = [(str(n), tuple(int(s) for s in shape if s))
                      for n, shape in zip(recorded['names'], recorded['shapes'])]
  return friendly(seeded_weights.seeded_state_dict(names_and_shapes, int(recorded['seed'])))


@pytest.fixture(scope='module')
def trained(recorded):
  config = _config(recorded)
  batch = one_step._batch(recorded, config.data)
  initial = _initial_weights(recorded)
  variables = convert.from_detectron2(initial)
  model = MaskRCNN(config.model)
  optimizer = optimizer_lib.make_optimizer(config.train, variables['params'],
                                           config.model.backbone.freeze_at)
  state = step_lib.new_train_state(optimizer, variables)
  step = compiler.jit(functools.partial(step_lib.train_step, model, optimizer,
                                        optimizer_lib.learning_rate_schedule(config.train)))
  history = []
  for _ in range(config.train.num_steps):
    state, metrics = step(state, batch, jax.random.PRNGKey(0))
    history.append(jax.device_get(metrics))
  theirs = dict(initial)
  theirs.update({str(n): recorded[f'final/{n}'] for n in recorded['trainable']})
  return dict(history=history, batch=batch, initial=variables['params'],
              final=jax.device_get(state.params),
              expected=convert.from_detectron2(theirs)['params'])


def test_the_batch_holds_the_recorders_mask_crops(trained, recorded):
  """The recorder's crops (written from the definition) are data/mask_crops.py's."""
  crops = trained['batch']['gt_masks']
  for i in range(2):
    n = len(recorded[f'gt_boxes_{i}'])
    np.testing.assert_array_equal(
        crops[i, :n], one_step._unpack(recorded[f'gt_crops_{i}'], (n,) + crops.shape[2:]))


def test_learning_rate_is_detectron2s_at_every_iteration(trained, recorded):
  ours = [float(m['learning_rate']) for m in trained['history']]
  np.testing.assert_allclose(ours, recorded['lr'], rtol=1e-6)
  # The trajectory crosses the end of warmup and the decay.
  warmup, decay = int(recorded['solver_warmup_iters']), int(recorded['solver_steps'][0])
  assert ours[0] < 1e-2 * ours[warmup] and np.isclose(ours[decay], 0.1 * ours[decay - 1])


@pytest.mark.parametrize('ours, theirs', LOSSES)
def test_every_iterations_loss_equals_detectron2s(trained, recorded, ours, theirs):
  values = np.array([float(m[ours]) for m in trained['history']])
  np.testing.assert_allclose(values, recorded[theirs], rtol=LOSS_RTOL, err_msg=ours)


def test_training_moved_the_losses(recorded):
  """The trajectory is not flat: every loss changes far beyond the tolerance."""
  for _, theirs in LOSSES:
    assert abs(recorded[theirs][-1] / recorded[theirs][0] - 1) > 100 * LOSS_RTOL, theirs


def _flat(params):
  return flax.traverse_util.flatten_dict(params, sep='/')


def test_final_weights_equal_detectron2s(trained):
  final, expected, initial = (_flat(trained[k]) for k in ('final', 'expected', 'initial'))
  assert final.keys() == expected.keys()
  moved = gap = 0.0
  for name, value in expected.items():
    np.testing.assert_allclose(final[name], value, atol=PARAM_ATOL, rtol=0, err_msg=name)
    moved = max(moved, float(np.abs(value - initial[name]).max()))
    gap = max(gap, float(np.abs(final[name] - value).max()))
  print(f'largest move {moved:.3g}, largest gap to Detectron2 {gap:.3g}')
  assert moved > 100 * PARAM_ATOL, moved


def test_frozen_stages_are_unchanged_bit_for_bit(trained):
  final, initial = _flat(trained['final']), _flat(trained['initial'])
  frozen = [k for k in final if k.startswith(('backbone/stem/', 'backbone/res2/'))]
  assert frozen
  for name in frozen:
    np.testing.assert_array_equal(final[name], initial[name], err_msg=name)
  # Everything else trained.
  assert all(not np.array_equal(final[k], initial[k]) for k in final if k not in frozen)
