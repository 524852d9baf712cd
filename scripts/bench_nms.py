"""Times maskrcnn_jax.ops.nms against max_output rounds of argmax + suppress (CPU, jit).

  /work/venv/bin/python scripts/bench_nms.py [repeats]
Prints the median milliseconds per case; the table in ops/nms.py comes from this script.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from maskrcnn_jax.ops import boxes as box_ops
from maskrcnn_jax.ops import nms as nms_ops


def argmax_rounds_nms(boxes, scores, iou_threshold, max_output, valid):
  """Alternative: each round keeps the best live box and suppresses its overlaps."""
  live_scores = jnp.where(valid, scores, -jnp.inf)
  alive = valid

  def body(i, state):
    alive, indices, out_valid = state
    best = jnp.argmax(jnp.where(alive, live_scores, -jnp.inf))
    found = alive[best]
    iou = box_ops.pairwise_iou(boxes[best][None], boxes)[0]
    alive = alive & ~(found & (iou > iou_threshold)) & (jnp.arange(alive.shape[0]) != best)
    return alive, indices.at[i].set(jnp.where(found, best, 0)), out_valid.at[i].set(found)

  init = (alive, jnp.zeros(max_output, jnp.int32), jnp.zeros(max_output, bool))
  return jax.lax.fori_loop(0, max_output, body, init)[1:]


def random_case(rng, num_boxes, batch=()):
  corners = rng.uniform(0, 800, size=batch + (num_boxes, 2))
  sides = rng.uniform(4, 200, size=batch + (num_boxes, 2))
  boxes = np.concatenate([corners, corners + sides], axis=-1).astype(np.float32)
  scores = rng.uniform(size=batch + (num_boxes,)).astype(np.float32)
  return jnp.asarray(boxes), jnp.asarray(scores), jnp.ones(batch + (num_boxes,), bool)


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
  algorithms = {'sorted matrix + pass': nms_ops.nms, 'argmax rounds': argmax_rounds_nms}
  cases = [('nms N=1000 out=1000 thr=0.7', 1000, 1000, 0.7, ()),
           ('nms N=2000 out=1000 thr=0.7', 2000, 1000, 0.7, ()),
           ('vmap 80 x N=1000 out=100 thr=0.5', 1000, 100, 0.5, (80,))]
  for name, num_boxes, max_output, threshold, batch in cases:
    args = random_case(rng, num_boxes, batch)
    row = []
    for algorithm in algorithms.values():
      fn = lambda b, s, v, algorithm=algorithm: algorithm(b, s, threshold, max_output, v)
      fn = jax.jit(jax.vmap(fn) if batch else fn)
      row.append(median_ms(fn, args, repeats))
    print(f'{name:36s}' + ''.join(f'{t:10.1f}' for t in row))
  boxes, scores, valid = random_case(rng, 1000)
  classes = jnp.asarray(rng.integers(1, 81, size=1000), jnp.int32)
  fn = jax.jit(lambda b, s, c, v: nms_ops.batched_nms(b, s, c, 0.5, 100, v))
  print(f'{"batched_nms N=1000 80 cls out=100":36s}'
        f'{median_ms(fn, (boxes, scores, classes, valid), repeats):10.1f}')


if __name__ == '__main__':
  main()
