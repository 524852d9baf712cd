"""The optimizer against hand-written SGD and against Detectron2's own: schedule, weight
decay, frozen stages, clipping."""

import flax
import jax
import numpy as np
import optax
import pytest

from maskrcnn_jax import config as config_lib
from maskrcnn_jax.train import optimizer as optimizer_lib
from tests.conftest import FIXTURES


def _train_config(**overrides):
  train = config_lib.default_config().train
  for key, value in overrides.items():
    train[key] = value
  return train


def _reference_lr(step, train):
  """Detectron2 WarmupMultiStepLR (linear), from its definition."""
  warmup = 1.0
  if step < train.warmup_steps:
    alpha = step / train.warmup_steps
    warmup = train.warmup_factor * (1 - alpha) + alpha
  return train.base_lr * warmup * train.lr_decay ** sum(step >= b for b in train.lr_steps)


@pytest.mark.parametrize('step', [0, 1, 500, 999, 1000, 1001, 59_999, 60_000, 79_999, 80_000,
                                  89_999])
def test_schedule_matches_detectron2(step):
  train = _train_config()
  schedule = optimizer_lib.learning_rate_schedule(train)
  np.testing.assert_allclose(schedule(step), _reference_lr(step, train), rtol=1e-6)


def test_schedule_without_warmup_starts_at_base_lr():
  train = _train_config(warmup_steps=0)
  np.testing.assert_allclose(optimizer_lib.learning_rate_schedule(train)(0), train.base_lr)


def _params():
  rng = np.random.default_rng(0)
  leaf = lambda *shape: rng.normal(size=shape).astype(np.float32)
  return {
      'backbone': {
          'stem': {'conv1': {'kernel': leaf(3, 3, 3, 4)}, 'bn1': {'scale': leaf(4)}},
          'res2': {'block0': {'conv1': {'kernel': leaf(1, 1, 4, 4)}}},
          'res3': {'block0': {'conv1': {'kernel': leaf(1, 1, 4, 4)},
                              'bn1': {'scale': leaf(4), 'bias': leaf(4)},
                              'downsample_bn': {'scale': leaf(4)}}},
      },
      'fpn': {'lateral2': {'kernel': leaf(1, 1, 4, 8), 'bias': leaf(8)}},
  }


def test_labels_follow_freeze_at_and_norm_layers():
  labels = optimizer_lib.parameter_labels(_params(), freeze_at=2)
  assert labels['backbone']['stem']['conv1']['kernel'] == 'frozen'
  assert labels['backbone']['res2']['block0']['conv1']['kernel'] == 'frozen'
  assert labels['backbone']['res3']['block0']['conv1']['kernel'] == 'decay'
  assert labels['backbone']['res3']['block0']['bn1']['scale'] == 'norm'
  assert labels['backbone']['res3']['block0']['downsample_bn']['scale'] == 'norm'
  assert labels['fpn']['lateral2']['bias'] == 'decay'
  nothing_frozen = optimizer_lib.parameter_labels(_params(), freeze_at=0)
  assert nothing_frozen['backbone']['stem']['conv1']['kernel'] == 'decay'


def test_two_steps_equal_hand_written_sgd():
  train = _train_config(warmup_steps=10)
  params = _params()
  grads = jax.tree.map(lambda p: np.full_like(p, 0.5), params)
  optimizer = optimizer_lib.make_optimizer(train, params, freeze_at=2)
  state = optimizer.init(params)
  current = params
  for _ in range(2):
    updates, state = optimizer.update(grads, state, current)
    current = jax.tree.map(lambda p, u: p + u, current, updates)

  labels = optimizer_lib.parameter_labels(params, freeze_at=2)

  def reference(p0, g, label):
    if label == 'frozen':
      return p0
    decay = train.weight_decay if label == 'decay' else 0.0
    p, velocity = p0.astype(np.float64), 0.0
    for step in range(2):
      velocity = train.momentum * velocity + g + decay * p
      p = p - _reference_lr(step, train) * velocity
    return p

  expected = jax.tree.map(reference, params, grads, labels)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
               current, expected)
  np.testing.assert_array_equal(current['backbone']['stem']['conv1']['kernel'],
                                params['backbone']['stem']['conv1']['kernel'])


def test_clipping_bounds_the_global_gradient_norm():
  train = _train_config(grad_clip_norm=1.0, weight_decay=0.0, momentum=0.0, warmup_steps=0)
  params = _params()
  grads = jax.tree.map(lambda p: np.full_like(p, 100.0), params)
  optimizer = optimizer_lib.make_optimizer(train, params, freeze_at=0)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  norm = np.sqrt(sum(np.sum(np.square(u)) for u in jax.tree.leaves(updates)))
  np.testing.assert_allclose(norm, train.base_lr * 1.0, rtol=1e-5)


@pytest.fixture(scope='module')
def detectron2_steps():
  return dict(np.load(FIXTURES / 'detectron2_optimizer.npz'))


def _tree(recorded, prefix):
  """Our parameter tree of the recorded arrays `prefix`/i, at their `ours` paths."""
  flat = {tuple(str(path).split('/')): recorded[f'{prefix}/{i}']
          for i, path in enumerate(recorded['ours'])}
  return flax.traverse_util.unflatten_dict(flat)


@pytest.mark.parametrize('kind', ['none', 'norm', 'value', 'full_model'])
def test_twenty_steps_equal_detectron2s_optimizer(detectron2_steps, kind):
  """Detectron2's build_optimizer / build_lr_scheduler on the same gradients
  (tests/tools/record_detectron2_optimizer.py): frozen stem and res2, no decay on
  GroupNorm weights and biases, decay on conv and linear weights and biases, each
  CLIP_GRADIENTS type, across warmup and a decay."""
  recorded = detectron2_steps
  num_steps = int(recorded['solver_max_iter'])
  train = _train_config(
      base_lr=float(recorded['solver_base_lr']), warmup_steps=int(recorded['solver_warmup_iters']),
      lr_steps=tuple(int(s) for s in recorded['solver_steps']),
      grad_clip_norm=float(recorded[f'clip_{kind}']),
      grad_clip_type='full_model' if kind == 'none' else kind)
  assert (train.momentum, train.weight_decay, train.warmup_factor, train.lr_decay) == (
      float(recorded['solver_momentum']), float(recorded['solver_weight_decay']),
      float(recorded['solver_warmup_factor']), float(recorded['solver_gamma']))
  params = _tree(recorded, 'initial')
  optimizer = optimizer_lib.make_optimizer(train, params, freeze_at=2)
  state = optimizer.init(params)
  update = jax.jit(optimizer.update)
  schedule = optimizer_lib.learning_rate_schedule(train)
  for step in range(num_steps):
    grads = jax.tree.map(lambda g: g[step], _tree(recorded, 'grads'))
    # Frozen stages get a gradient here (Detectron2 computes none): it must not count.
    grads = jax.tree.map(lambda g: g + 10.0 * (g == 0), grads)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(schedule(step), recorded[f'{kind}/lr'][step], rtol=1e-6)
  expected = _tree(recorded, f'{kind}/final')
  flat, flat_expected = (flax.traverse_util.flatten_dict(t, sep='/') for t in (params, expected))
  for name, value in flat_expected.items():
    np.testing.assert_allclose(flat[name], value, rtol=0, atol=1e-6, err_msg=name)
  initial = flax.traverse_util.flatten_dict(_tree(recorded, 'initial'), sep='/')
  moved = {n: float(np.abs(flat[n] - initial[n]).max()) for n in flat}
  trainable = [str(o) for o, t in zip(recorded['ours'], recorded['trainable']) if t]
  assert all(moved[n] > 1e-3 for n in trainable), moved
  assert all(moved[n] == 0 for n in flat if n not in trainable)


def _torchvision_steps(recorded, weight_decay_norm):
  """Our parameters after the recorded steps with torchvision's schedule, and its lrs."""
  epoch = int(recorded['torchvision_epoch'])
  train = _train_config(
      base_lr=float(recorded['solver_base_lr']), warmup_steps=epoch - 1,
      lr_steps=tuple(epoch * int(s) for s in recorded['torchvision_lr_steps']),
      weight_decay_norm=weight_decay_norm)
  params = _tree(recorded, 'initial')
  optimizer = optimizer_lib.make_optimizer(train, params, freeze_at=2)
  state = optimizer.init(params)
  schedule = optimizer_lib.learning_rate_schedule(train)
  for step in range(int(recorded['solver_max_iter'])):
    grads = jax.tree.map(lambda g: g[step], _tree(recorded, 'grads'))
    updates, state = optimizer.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  lrs = [float(schedule(step)) for step in range(int(recorded['solver_max_iter']))]
  return flax.traverse_util.flatten_dict(params, sep='/'), lrs


def test_twenty_steps_equal_torchvisions_reference_recipe(detectron2_steps):
  """torchvision's references/detection/train.py on the same gradients: weight decay on the
  GroupNorm parameters too, warmup over the first epoch's iterations but one, a decay per
  epoch milestone (tests/tools/record_detectron2_optimizer.py)."""
  recorded = detectron2_steps
  flat, lrs = _torchvision_steps(recorded, float(recorded['solver_weight_decay']))
  np.testing.assert_allclose(lrs, recorded['torchvision/lr'], rtol=1e-6)
  expected = flax.traverse_util.flatten_dict(_tree(recorded, 'torchvision/final'), sep='/')
  for name, value in expected.items():
    np.testing.assert_allclose(flat[name], value, rtol=0, atol=1e-6, err_msg=name)
  # Without decay on the norms (Detectron2's rule) the GroupNorm parameters miss it.
  undecayed, _ = _torchvision_steps(recorded, 0.0)
  for name in ('backbone/res3/block0/bn1/scale', 'backbone/res3/block0/downsample_bn/bias'):
    assert np.abs(undecayed[name] - expected[name]).max() > 1e-5, name


def test_torchvision_config_decays_norms_as_its_recipe():
  config = config_lib.load_config_file(FIXTURES.parents[1] / 'configs' / 'torchvision_r50_fpn.py')
  assert config.train.weight_decay_norm == config.train.weight_decay
  assert config_lib.default_config().train.weight_decay_norm == 0.0


def test_clip_settings_change_the_result(detectron2_steps):
  """Each clipper bites on the recorded gradients: no two settings end at the same place."""
  finals = [np.concatenate([detectron2_steps[f'{kind}/final/{i}'].ravel()
                            for i in range(len(detectron2_steps['ours']))])
            for kind in ('none', 'norm', 'value', 'full_model')]
  for a in range(4):
    for b in range(a):
      assert np.abs(finals[a] - finals[b]).max() > 1e-3, (a, b)


def test_unknown_clip_type_is_an_error_naming_the_key():
  with pytest.raises(ValueError, match='config.train.grad_clip_type'):
    optimizer_lib.make_optimizer(_train_config(grad_clip_type='global', grad_clip_norm=1.0),
                                 _params(), freeze_at=0)
