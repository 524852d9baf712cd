"""Times maskrcnn_jax.ops.nms (selection rounds, static trip count) against the previous
form (an [N, N] matrix and one pass over the boxes that stops early: a data-dependent
while loop) on the model's own NMS shapes, jitted, on this machine's default backend.

  python scripts/bench_nms.py [repeats]

Prints the median milliseconds per case; docs/benchmarks.md ("NMS") records the table.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from maskrcnn_jax.ops import boxes as box_ops
from maskrcnn_jax.ops import nms as nms_ops


def early_exit_pass_nms(boxes, scores, iou_threshold, max_output, valid, classes=None):
  """The previous algorithm: sort, [N, N] overlaps, a pass that stops once it is done."""
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


def random_case(rng, num_boxes, num_classes):
  corners = rng.uniform(0, 1000, size=(num_boxes, 2))
  sides = rng.uniform(8, 300, size=(num_boxes, 2))
  boxes = np.concatenate([corners, corners + sides], axis=-1).astype(np.float32)
  scores = rng.uniform(size=num_boxes).astype(np.float32)
  classes = rng.integers(0, num_classes, size=num_boxes).astype(np.int32)
  return (jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(classes),
          jnp.ones(num_boxes, bool))


def median_ms(fn, args, repeats):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def main():
  repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 7
  rng = np.random.default_rng(0)
  # (name, boxes, classes, outputs, threshold): the R50-FPN 1x model's NMS calls.
  cases = [('RPN train: 5 levels, 9323 boxes -> 1000', 9323, 5, 1000, 0.7),
           ('RPN test: 5 levels, 4323 boxes -> 1000', 4323, 5, 1000, 0.7),
           ('detection: 80 classes, 5000 cand. -> 100', 5000, 80, 100, 0.5)]
  print(f'{"case (median ms, batch 2 vmapped)":44s}{"rounds":>10s}{"early-exit":>12s}')
  for name, num_boxes, num_classes, max_output, threshold in cases:
    args = [jnp.stack([a, a]) for a in random_case(rng, num_boxes, num_classes)]
    rounds = jax.jit(jax.vmap(lambda b, s, c, v: nms_ops.batched_nms(
        b, s, c, threshold, max_output, v)[0]))
    early = jax.jit(jax.vmap(lambda b, s, c, v: early_exit_pass_nms(
        b, s, threshold, max_output, v, c)))
    np.testing.assert_array_equal(rounds(*args), early(*args))  # one greedy NMS
    print(f'{name:44s}{median_ms(rounds, args, repeats):10.1f}'
          f'{median_ms(early, args, repeats):12.1f}')


if __name__ == '__main__':
  main()
