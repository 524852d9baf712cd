"""Where a diverging run began, on loss curves shaped like real ones."""

import numpy as np

from maskrcnn_jax.train import divergence


def _curve(n, seed=0):
  """A falling, noisy loss (about 3 to 1.5) and gradient norm (about 20 to 10)."""
  rng = np.random.default_rng(seed)
  fall = np.linspace(1.0, 0.5, n)
  return list(3 * fall * rng.uniform(0.8, 1.25, n)), list(20 * fall * rng.uniform(0.7, 1.4, n))


def test_the_onset_is_the_spike_before_the_nan_even_if_it_oscillates():
  totals, norms = _curve(60)
  # Step 61 spikes (the numbers), the loss comes and goes, then NaN at step 70.
  totals += [788.0, 40.0, 2.0, 300.0, 2.5, 900.0, 3.0, 2.8, 5e4, float('nan')]
  norms += [1e4, 300.0, 15.0, 2e3, 12.0, 5e3, 14.0, 13.0, 1e6, float('nan')]
  steps = list(range(1, 71))
  assert divergence.divergence_onset(steps, totals, norms) == 61
  # Checkpoint 60 ran step 61 (the spike): the last good one is 40.
  assert divergence.last_good_checkpoint(61, [20, 40, 60]) == 40
  assert divergence.last_good_checkpoint(61, [60, 70]) is None


def test_a_gradient_norm_spike_alone_is_an_onset():
  totals, norms = _curve(40)
  totals += [2.0, 2.1, float('nan')]
  norms += [200.0, 15.0, float('nan')]  # 200 > 5 x the median of about 13
  assert divergence.divergence_onset(list(range(1, 44)), totals, norms) == 41


def test_a_spike_the_run_recovered_from_is_not_the_onset():
  totals, norms = _curve(80)
  totals[29], norms[29] = 50.0, 900.0  # step 30: a bad batch, then 50 calm steps
  totals.append(float('inf'))
  norms.append(15.0)
  assert divergence.divergence_onset(list(range(1, 82)), totals, norms) == 81
  assert divergence.last_good_checkpoint(81, [40, 60, 80]) == 60


def test_no_spike_is_judged_before_five_steps():
  assert divergence.divergence_onset([1, 2, 3], [3.0, 100.0, float('nan')],
                                     [10.0, 10.0, float('nan')]) == 3
