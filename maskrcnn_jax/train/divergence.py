"""Where a diverging run began, from its loss and gradient-norm history (host side).

A run rarely goes from a sane loss to NaN in one step: the total loss or the gradient
norm first spikes well above their running medians (a loss of 788 where it was 2), and
a checkpoint saved after that spike diverges again when resumed (the batches and the
samplers' key are fixed by the step). The last checkpoint worth resuming is the last one
saved before the spike.
"""

import collections
from typing import Sequence

import numpy as np

SPIKE_FACTOR = 5.0  # a spike: the loss or the gradient norm above 5x its running median
_WINDOW = 20  # steps of the running medians (spikes excluded)
_MIN_WINDOW = 5  # steps before a median is trusted
_CALM_STEPS = 20  # calm steps after a spike that end it: a divergence is not this calm


def divergence_onset(steps: Sequence[int], totals: Sequence[float],
                     grad_norms: Sequence[float]) -> int:
  """The step at which the divergence ending the history began.

  Args:
    steps, totals, grad_norms: [n] consecutive steps, their total loss and gradient
      norm, the last (and only the last) of them not finite.

  Returns:
    the first spike not followed by `_CALM_STEPS` calm steps; the last step when the
    run went to NaN without a spike.
  """
  recent_totals = collections.deque(maxlen=_WINDOW)
  recent_norms = collections.deque(maxlen=_WINDOW)
  onset, calm = None, 0
  for step, total, norm in zip(steps, totals, grad_norms):
    if not (np.isfinite(total) and np.isfinite(norm)):
      return step if onset is None else onset
    spike = len(recent_totals) >= _MIN_WINDOW and (
        total > SPIKE_FACTOR * np.median(recent_totals)
        or norm > SPIKE_FACTOR * np.median(recent_norms))
    if spike:
      onset = step if onset is None else onset
      calm = 0
      continue
    recent_totals.append(total)
    recent_norms.append(norm)
    calm += 1
    if calm >= _CALM_STEPS:
      onset = None
  return steps[-1] if onset is None else onset


def last_good_checkpoint(onset: int, checkpoint_steps: Sequence[int]) -> int | None:
  """The newest of `checkpoint_steps` whose next step (the first run from it) came
  before `onset`, or None."""
  good = [step for step in checkpoint_steps if step + 1 < onset]
  return max(good) if good else None
