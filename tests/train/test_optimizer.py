"""The optimizer against hand-written SGD: schedule, weight decay, frozen stages, clipping."""

import jax
import numpy as np
import pytest

from maskrcnn_jax import config as config_lib
from maskrcnn_jax.train import optimizer as optimizer_lib


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
  assert labels['backbone']['res3']['block0']['bn1']['scale'] == 'no_decay'
  assert labels['backbone']['res3']['block0']['downsample_bn']['scale'] == 'no_decay'
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
