"""Tests for maskrcnn_jax.ops.sampling: torchvision's counts, candidate sets, uniformity."""

import functools
import itertools

import jax
import numpy as np
import pytest

from maskrcnn_jax.ops import sampling

NUM = 12  # candidates per image


@functools.partial(jax.jit, static_argnames=('num_samples', 'positive_fraction'))
def _sample_many(keys, positive, negative, num_samples, positive_fraction):
  """vmap over a batch of keys and masks: one compile per static configuration."""
  return jax.vmap(sampling.sample_balanced, in_axes=(0, 0, 0, None, None))(
      keys, positive, negative, num_samples, positive_fraction)


def _masks(rng, num_pos, num_neg, overlap=False):
  """Random disjoint positive / negative masks over NUM; the rest is neither (ignored)."""
  order = rng.permutation(NUM)
  positive = np.zeros(NUM, bool)
  negative = np.zeros(NUM, bool)
  positive[order[:num_pos]] = True
  negative[order[num_pos:num_pos + num_neg]] = True
  if overlap:
    negative[order[:num_pos]] = True
  return positive, negative


def _check(indices, valid, is_positive, positive, negative, num_samples, fraction):
  """Counts per torchvision's formula, right candidate sets, no duplicates, layout."""
  negative = negative & ~positive
  num_pos = min(int(num_samples * fraction), positive.sum())
  num_neg = min(num_samples - num_pos, negative.sum())
  assert indices.dtype == np.int32 and indices.shape == (num_samples,)
  np.testing.assert_array_equal(valid, np.arange(num_samples) < num_pos + num_neg)
  np.testing.assert_array_equal(is_positive, np.arange(num_samples) < num_pos)
  assert np.all(indices[~valid] == 0)
  assert np.all(positive[indices[is_positive]])
  assert np.all(negative[indices[valid & ~is_positive]])
  assert len(set(indices[valid].tolist())) == num_pos + num_neg


@pytest.mark.slow
def test_counts_and_candidates_over_many_cases():
  rng = np.random.default_rng(0)
  cases = [(p, n) for p, n in itertools.product(range(NUM + 1), repeat=2) if p + n <= NUM]
  positive, negative = zip(*[_masks(rng, p, n) for p, n in cases])
  positive, negative = np.stack(positive), np.stack(negative)
  keys = jax.random.split(jax.random.key(0), len(cases))
  for num_samples, fraction in [(8, 0.25), (8, 0.5), (5, 0.5), (4, 1.0), (20, 0.25)]:
    results = [np.asarray(r) for r in
               _sample_many(keys, positive, negative, num_samples, fraction)]
    for i in range(len(cases)):
      _check(*(r[i] for r in results), positive[i], negative[i], num_samples, fraction)


def test_all_invalid_and_overlap():
  positive = np.zeros((2, NUM), bool)
  negative = np.zeros((2, NUM), bool)
  indices, valid, is_positive = _sample_many(
      jax.random.split(jax.random.key(1), 2), positive, negative, 8, 0.25)
  assert not np.any(valid) and not np.any(is_positive) and np.all(indices == 0)
  # An element marked both positive and negative is only ever sampled as a positive.
  rng = np.random.default_rng(1)
  positive, negative = zip(*[_masks(rng, 3, 4, overlap=True) for _ in range(8)])
  positive, negative = np.stack(positive), np.stack(negative)
  results = [np.asarray(r) for r in
             _sample_many(jax.random.split(jax.random.key(2), 8), positive, negative, 8, 0.5)]
  for i in range(8):
    _check(*(r[i] for r in results), positive[i], negative[i], 8, 0.5)


def test_uniform_over_candidates():
  # 6 positives of which 2 are drawn, 5 negatives of which 2 are drawn, over many keys.
  trials = 3000
  positive = np.zeros(NUM, bool)
  negative = np.zeros(NUM, bool)
  positive[[0, 2, 4, 6, 8, 10]] = True
  negative[[1, 3, 5, 7, 11]] = True
  keys = jax.random.split(jax.random.key(3), trials)
  indices, valid, is_positive = _sample_many(
      keys, np.broadcast_to(positive, (trials, NUM)),
      np.broadcast_to(negative, (trials, NUM)), 4, 0.5)
  assert np.all(valid) and np.all(is_positive[:, :2]) and not np.any(is_positive[:, 2:])
  for candidates, picked in [(positive, indices[:, :2]), (negative, indices[:, 2:])]:
    counts = np.bincount(np.asarray(picked).ravel(), minlength=NUM)[candidates]
    expected = picked.size / candidates.sum()
    chi_square = np.sum((counts - expected) ** 2 / expected)
    # 4-5 degrees of freedom: P(chi2 > 25) < 1e-4, yet a 10% bias on one item fails.
    assert chi_square < 25.0, (counts, expected)
  # Positives come out in random order, not sorted by index.
  assert np.mean(indices[:, 0] < indices[:, 1]) < 0.6


def test_jit_vmap_match_single_calls():
  rng = np.random.default_rng(2)
  positive, negative = zip(*[_masks(rng, 3, 6) for _ in range(4)])
  positive, negative = np.stack(positive), np.stack(negative)
  keys = jax.random.split(jax.random.key(4), 4)
  batched = _sample_many(keys, positive, negative, 6, 0.5)
  for i in range(4):
    single = sampling.sample_balanced(keys[i], positive[i], negative[i], 6, 0.5)
    for b, s in zip(batched, single):
      np.testing.assert_array_equal(b[i], s)
  # Different keys give different samples.
  assert len({tuple(np.asarray(b)) for b in batched[0]}) > 1
