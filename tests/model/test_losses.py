"""Losses vs loop references written from torchvision's definitions (float64)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax.model import losses
from maskrcnn_jax.model import targets


def _np_smooth_l1(x, beta):
  return abs(x) if beta < 1e-5 else (0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta)


def _np_bce(logit, target):
  """-[t log s(x) + (1 - t) log(1 - s(x))]."""
  prob = 1.0 / (1.0 + math.exp(-logit))
  return -(target * math.log(prob) + (1 - target) * math.log(1 - prob))


def _np_ce(logits, label):
  """-log softmax(logits)[label]."""
  logits = np.asarray(logits, np.float64)
  return -(logits[label] - logits.max() - math.log(np.sum(np.exp(logits - logits.max()))))


def _np_rpn_losses(objectness, deltas, labels, box_targets, beta):
  sampled = [a for a in range(len(labels)) if labels[a] >= 0]
  cls = sum(_np_bce(objectness[a], labels[a]) for a in sampled) / len(sampled)
  box = sum(_np_smooth_l1(deltas[a, j] - box_targets[a, j], beta)
            for a in sampled if labels[a] == 1 for j in range(4)) / len(sampled)
  return cls, box


def _np_box_head_losses(class_logits, box_deltas, t, beta):
  sampled = [s for s in range(len(t['labels'])) if t['roi_valid'][s]]
  cls = sum(_np_ce(class_logits[s], t['labels'][s]) for s in sampled) / len(sampled)
  box = sum(_np_smooth_l1(box_deltas[s, t['labels'][s], j] - t['box_targets'][s, j], beta)
            for s in sampled if t['is_foreground'][s] for j in range(4)) / len(sampled)
  return cls, box


def _np_mask_loss(logits, mask_targets, labels, is_foreground, mode, class_agnostic):
  total, count = 0.0, 0
  size = mask_targets.shape[1]
  for s in np.flatnonzero(is_foreground):
    for i in range(size):
      for j in range(size):
        if mode == 'sigmoid':
          channel = 0 if class_agnostic else labels[s]
          total += _np_bce(logits[s, i, j, channel], mask_targets[s, i, j])
        else:
          total += _np_ce(logits[s, i, j], labels[s] if mask_targets[s, i, j] else 0)
        count += 1
  return total / count if count else 0.0


def _rpn_case(rng, num=40, num_pos=3, num_neg=9):
  labels = np.full(num, -1, np.int32)
  order = rng.permutation(num)
  labels[order[:num_pos]] = 1
  labels[order[num_pos:num_pos + num_neg]] = 0
  box_targets = np.where((labels == 1)[:, None], rng.normal(size=(num, 4)), 0.0)
  return (rng.normal(size=num).astype(np.float32) * 3,
          rng.normal(size=(num, 4)).astype(np.float32) * 0.3,
          {'labels': labels, 'box_targets': box_targets.astype(np.float32)})


def _roi_case(rng, num=12, num_classes=3, num_fg=3, num_valid=9):
  labels = np.zeros(num, np.int32)
  labels[:num_fg] = rng.integers(1, num_classes + 1, num_fg)
  is_foreground = np.arange(num) < num_fg
  box_targets = np.where(is_foreground[:, None], rng.normal(size=(num, 4)), 0.0)
  return (rng.normal(size=(num, num_classes + 1)).astype(np.float32) * 2,
          rng.normal(size=(num, num_classes + 1, 4)).astype(np.float32),
          {'roi_valid': np.arange(num) < num_valid, 'labels': labels,
           'is_foreground': is_foreground, 'box_targets': box_targets.astype(np.float32),
           'rois': np.zeros((num, 4), np.float32), 'matched_gt': np.zeros(num, np.int32)})


def _mask_case(rng, num=5, size=4, channels=4, num_fg=2):
  labels = np.zeros(num, np.int32)
  labels[:num_fg] = rng.integers(1, channels, num_fg)
  return (rng.normal(size=(num, size, size, channels)).astype(np.float32) * 2,
          rng.integers(0, 2, (num, size, size)).astype(np.float32), labels,
          np.arange(num) < num_fg)


@pytest.mark.parametrize('box_loss,beta', [('smooth_l1', 1.0 / 9.0), ('smooth_l1', 1.0),
                                           ('smooth_l1', 1e-6), ('l1', 1.0)])
def test_rpn_and_box_head_losses_against_reference(box_loss, beta):
  rng = np.random.default_rng(0)
  ref_beta = 0.0 if box_loss == 'l1' else beta
  objectness, deltas, t = _rpn_case(rng)
  cls, box = losses.rpn_losses(objectness, deltas, t, box_loss=box_loss, beta=beta)
  np.testing.assert_allclose((cls, box), _np_rpn_losses(objectness, deltas, t['labels'],
                                                        t['box_targets'], ref_beta), rtol=1e-5)
  class_logits, box_deltas, t = _roi_case(rng)
  cls, box = losses.box_head_losses(class_logits, box_deltas, t, box_loss=box_loss, beta=beta)
  np.testing.assert_allclose((cls, box), _np_box_head_losses(class_logits, box_deltas, t,
                                                             ref_beta), rtol=1e-5)


def test_rpn_losses_with_a_fixed_normalizer_divide_the_same_sums_by_it():
  """Detectron2's divisor (batch size per image x images) in place of the sampled count."""
  objectness, deltas, t = _rpn_case(np.random.default_rng(3))
  num_sampled = int(np.sum(np.asarray(t['labels']) >= 0))
  expected = np.array(_np_rpn_losses(objectness, deltas, t['labels'], t['box_targets'],
                                     1.0 / 9.0)) * num_sampled / 1024
  np.testing.assert_allclose(losses.rpn_losses(objectness, deltas, t, normalizer=1024),
                             expected, rtol=1e-5)
  assert num_sampled != 1024


def test_smooth_l1_edges():
  x = np.array([-2.0, -0.5, 0.0, 0.25, 0.5, 3.0], np.float32)
  for beta in (0.5, 1.0, 1e-6, 0.0):
    np.testing.assert_allclose(losses.smooth_l1(jnp.asarray(x), beta),
                               [_np_smooth_l1(v, beta) for v in x], rtol=1e-6)


@pytest.mark.parametrize('mode,class_agnostic', [('sigmoid', False), ('sigmoid', True),
                                                 ('softmax', False)])
def test_mask_loss_against_reference(mode, class_agnostic):
  logits, mask_targets, labels, is_foreground = _mask_case(np.random.default_rng(1))
  if class_agnostic:
    logits = logits[..., :1]
  loss = losses.mask_loss(logits, mask_targets, labels, is_foreground, mode=mode,
                          class_agnostic=class_agnostic)
  np.testing.assert_allclose(loss, _np_mask_loss(logits, mask_targets, labels, is_foreground,
                                                 mode, class_agnostic), rtol=1e-5)


def test_bad_modes_raise():
  logits, mask_targets, labels, is_foreground = _mask_case(np.random.default_rng(2))
  with pytest.raises(ValueError):
    losses.mask_loss(logits, mask_targets, labels, is_foreground, mode='focal')
  with pytest.raises(ValueError):
    losses.mask_loss(logits[..., :1], mask_targets, labels, is_foreground, mode='softmax',
                     class_agnostic=True)
  objectness, deltas, t = _rpn_case(np.random.default_rng(2))
  with pytest.raises(ValueError):
    losses.rpn_losses(objectness, deltas, t, box_loss='l2')


def test_empty_samples_give_zero_losses_and_finite_gradients():
  rng = np.random.default_rng(3)
  objectness, deltas, t = _rpn_case(rng, num_pos=0, num_neg=0)
  class_logits, box_deltas, roi_t = _roi_case(rng, num_fg=0, num_valid=0)
  logits, mask_targets, labels, _ = _mask_case(rng, num_fg=0)
  no_fg = np.zeros(len(labels), bool)

  def total(objectness, deltas, class_logits, box_deltas, logits):
    return (sum(losses.rpn_losses(objectness, deltas, t))
            + sum(losses.box_head_losses(class_logits, box_deltas, roi_t))
            + losses.mask_loss(logits, mask_targets, labels, no_fg)
            + losses.mask_loss(logits, mask_targets, labels, no_fg, mode='softmax'))

  value, grads = jax.jit(jax.value_and_grad(total, argnums=tuple(range(5))))(
      objectness, deltas, class_logits, box_deltas, logits)
  assert value == 0.0
  for grad in grads:
    np.testing.assert_array_equal(grad, 0.0)
  # No positives but some negatives: finite, box loss exactly zero.
  objectness, deltas, t = _rpn_case(rng, num_pos=0, num_neg=5)
  cls, box = losses.rpn_losses(objectness, deltas, t)
  assert np.isfinite(cls) and cls > 0 and box == 0.0


def test_gradients_through_targets_with_padded_gt():
  """Targets from all-padding / partly padded gt, then losses: gradients stay finite."""
  rng = np.random.default_rng(4)
  anchors = np.concatenate([rng.uniform(0, 20, (60, 2)), rng.uniform(25, 40, (60, 2))],
                           axis=1).astype(np.float32)
  gt = np.zeros((4, 4), np.float32)
  gt[0] = [2, 3, 30, 35]
  classes = np.array([2, 0, 0, 0], np.int32)
  key = jax.random.key(0)

  @jax.jit
  def total(params, gt_valid):
    objectness, deltas, class_logits, box_deltas = params
    rpn_t = targets.rpn_targets(anchors, gt, gt_valid, np.zeros(4, bool), key, batch_size=16)
    roi_t = targets.roi_targets(anchors[:8], np.ones(8, bool), gt, classes, gt_valid,
                                np.zeros(4, bool), key, batch_size=8)
    return (sum(losses.rpn_losses(objectness, deltas, rpn_t))
            + sum(losses.box_head_losses(class_logits, box_deltas, roi_t)))

  params = (rng.normal(size=60).astype(np.float32), rng.normal(size=(60, 4)).astype(np.float32),
            rng.normal(size=(8, 3)).astype(np.float32),
            rng.normal(size=(8, 3, 4)).astype(np.float32))
  for gt_valid in (np.zeros(4, bool), np.array([True, False, False, False])):
    value, grads = jax.value_and_grad(total)(params, gt_valid)
    assert np.isfinite(value)
    for grad in grads:
      assert np.all(np.isfinite(grad))


def test_vmap_jit_matches_per_image():
  rng = np.random.default_rng(5)
  rpn_cases = [_rpn_case(rng) for _ in range(2)]
  roi_cases = [_roi_case(rng) for _ in range(2)]
  mask_cases = [_mask_case(rng) for _ in range(2)]

  def stack(cases):
    return jax.tree.map(lambda *x: np.stack(x), *cases)

  rpn = jax.jit(jax.vmap(functools.partial(losses.rpn_losses, box_loss='l1')))
  roi = jax.jit(jax.vmap(losses.box_head_losses))
  mask = jax.jit(jax.vmap(functools.partial(losses.mask_loss, mode='softmax')))
  batched = (rpn(*stack(rpn_cases)), roi(*stack(roi_cases)), mask(*stack(mask_cases)))
  for i in range(2):
    single = (losses.rpn_losses(*rpn_cases[i], box_loss='l1'),
              losses.box_head_losses(*roi_cases[i]),
              losses.mask_loss(*mask_cases[i], mode='softmax'))
    np.testing.assert_allclose([x[i] for x in jax.tree.leaves(batched)],
                               jax.tree.leaves(single), rtol=1e-5)
