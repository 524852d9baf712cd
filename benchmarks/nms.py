"""NMS timing (`scripts/benchmark.py --mode nms`, or `scripts/bench_nms.py [repeats]`).

Times maskrcnn_jax.ops.nms (selection rounds, static trip count) against the previous
form (an [N, N] matrix and one pass over the boxes that stops early: a data-dependent
while loop) on the R50-FPN 1x model's own NMS shapes, batch 2 vmapped, jitted, on this
machine's default backend; the two must keep the same boxes. docs/benchmarks.md ("NMS")
records the table.
"""

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import tables
from benchmarks import timing
from maskrcnn_jax.ops import boxes as box_ops
from maskrcnn_jax.ops import nms as nms_ops

# (name, boxes, classes, outputs, IoU threshold): the R50-FPN 1x model's NMS calls.
CASES = (('RPN train: 5 levels, 9323 boxes -> 1000', 9323, 5, 1000, 0.7),
         ('RPN test: 5 levels, 4323 boxes -> 1000', 4323, 5, 1000, 0.7),
         ('detection: 80 classes, 5000 cand. -> 100', 5000, 80, 100, 0.5))
BATCH = 2


def early_exit_pass_nms(boxes, scores, iou_threshold, max_output, valid, classes=None):
  """The previous algorithm: sort, [N, N] overlaps, a pass that stops once it is done.

  boxes [N, 4], scores / valid / classes [N] -> [max_output] int32 indices into them.
  """
  num_boxes = scores.shape[0]
  order = jax.lax.sort(((~valid).astype(jnp.int32), -scores,
                        jnp.arange(num_boxes, dtype=jnp.int32)), num_keys=2, is_stable=True)[2]
  sorted_boxes, sorted_valid = boxes[order], valid[order]
  overlaps = box_ops.pairwise_iou(sorted_boxes, sorted_boxes) > iou_threshold
  if classes is not None:
    overlaps &= classes[order][:, None] == classes[order][None, :]
  overlaps &= jnp.arange(num_boxes)[None, :] > jnp.arange(num_boxes)[:, None]
  num_valid = jnp.sum(sorted_valid)

  def body(state):
    i, count, suppressed = state
    kept = sorted_valid[i] & ~suppressed[i]
    return i + 1, count + kept.astype(jnp.int32), suppressed | (kept & overlaps[i])

  stop, _, suppressed = jax.lax.while_loop(
      lambda s: (s[0] < num_valid) & (s[1] < max_output), body,
      (0, 0, jnp.zeros(num_boxes, bool)))
  keep = sorted_valid & ~suppressed & (jnp.arange(num_boxes) < stop)
  positions = jnp.nonzero(keep, size=max_output, fill_value=num_boxes)[0]
  return jnp.where(positions < num_boxes, order[jnp.minimum(positions, num_boxes - 1)], 0)


def random_case(rng: np.random.Generator, num_boxes: int, num_classes: int):
  """boxes [N, 4] (x1y1x2y2, sides 8-300 px), scores [N], classes [N], valid [N], as jax
  arrays."""
  corners = rng.uniform(0, 1000, size=(num_boxes, 2))
  sides = rng.uniform(8, 300, size=(num_boxes, 2))
  boxes = np.concatenate([corners, corners + sides], axis=-1).astype(np.float32)
  scores = rng.uniform(size=num_boxes).astype(np.float32)
  classes = rng.integers(0, num_classes, size=num_boxes).astype(np.int32)
  return (jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(classes),
          jnp.ones(num_boxes, bool))


def _timing_json(measured: timing.Timing) -> dict[str, Any]:
  return dict(measured.to_json(), min_s=measured.min_s, max_s=measured.max_s)


def time_cases(steps: int, warmup: int, seed: int = 0) -> dict[str, Any]:
  """Each of `CASES` in both forms: 'cases' (their timings: the first call compiles) and
  'backend'. Raises AssertionError where the two keep different boxes."""
  rng = np.random.default_rng(seed)
  cases = []
  for name, num_boxes, num_classes, max_output, threshold in CASES:
    args = [jnp.stack([a] * BATCH) for a in random_case(rng, num_boxes, num_classes)]
    rounds = jax.jit(jax.vmap(lambda b, s, c, v, t=threshold, m=max_output:
                              nms_ops.batched_nms(b, s, c, t, m, v)[0]))
    early = jax.jit(jax.vmap(lambda b, s, c, v, t=threshold, m=max_output:
                             early_exit_pass_nms(b, s, t, m, v, c)))
    np.testing.assert_array_equal(rounds(*args), early(*args))  # one greedy NMS
    timings = {form: timing.time_calls(lambda fn=fn: jax.block_until_ready(fn(*args)),
                                       steps, warmup)
               for form, fn in (('rounds', rounds), ('early_exit', early))}
    cases.append({'case': name, 'boxes': num_boxes, 'classes': num_classes,
                  'max_output': max_output, 'iou_threshold': threshold,
                  **{form: _timing_json(t) for form, t in timings.items()}})
  return {'batch': BATCH, 'backend': jax.default_backend(), 'steps': steps,
          'warmup': warmup, 'cases': cases}


def markdown_table(result: dict[str, Any]) -> str:
  """Median (min-max) milliseconds per case and form."""

  def ms(t: dict[str, float]) -> str:
    return f'{1e3 * t["median_s"]:.1f} ({1e3 * t["min_s"]:.1f}-{1e3 * t["max_s"]:.1f})'

  lines = [f'NMS, batch {result["batch"]} vmapped, {result["backend"]}, median (min-max) ms '
           f'of {result["steps"]} calls:', '']
  lines += tables.markdown_table(['case', 'rounds', 'early-exit'],
                                 [[c['case'], ms(c['rounds']), ms(c['early_exit'])]
                                  for c in result['cases']])
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
  """`scripts/bench_nms.py [repeats]`: prints the table of `repeats` timed calls."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('repeats', type=int, nargs='?', default=7,
                      help='timed calls per case after the first (default 7)')
  args = parser.parse_args(argv)
  if args.repeats < 1:
    parser.error('repeats must be positive')
  print(markdown_table(time_cases(args.repeats, warmup=0)))
