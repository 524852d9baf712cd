"""Greedy non-maximum suppression with static shapes (torchvision.ops.nms semantics).

A box is suppressed when its IoU with a kept, higher-ranked box is > iou_threshold. Ranks
are score descending, ties by lower index. Outputs are fixed-size index lists in rank
order plus a validity mask; padded entries hold index 0.

Algorithm: sort once, then max_output selection rounds in a loop with a static trip
count. Each round keeps the first box still in play and takes out of play every box it
suppresses (IoU of that one box against all N, O(N) work). A kept box's decision depends
only on higher-ranked boxes, so the rounds keep exactly greedy NMS's boxes, in order.

Why rounds, and not a pass over the boxes that stops early, or tiles that iterate until
they settle: both are loops whose trip count depends on the data, and on XLA:GPU each
iteration of such a loop copies its predicate to the host and waits for it. A loop with
a trip count XLA knows runs its body back to back. Exact greedy NMS needs up to
max_output dependent steps in the worst case (a chain of boxes, each overlapping the
next), so a static trip count of max_output rounds is the least any exact form can
promise; a round here is one argmax and one IoU row. Class-aware NMS (`batched_nms`) is
one set of rounds over all classes, with suppression only within a class, so per-class
detection NMS costs max_output rounds, not one loop per class. Timings:
docs/benchmarks.md ("NMS").
"""

import jax
import jax.numpy as jnp

from maskrcnn_jax.ops import boxes as box_ops


def _selection_rounds(sorted_boxes, sorted_valid, sorted_classes, iou_threshold, rounds):
  """Greedy NMS over boxes already sorted by rank, as `rounds` selection rounds.

  Args:
    sorted_boxes: [N, 4] x1y1x2y2, rank order.
    sorted_valid: [N] bool; invalid boxes are never kept nor suppress.
    sorted_classes: [N] int32 or None (class agnostic).
    iou_threshold: suppression when IoU > iou_threshold (within a class).
    rounds: static number of boxes to select (<= N).

  Returns:
    [rounds] int32 positions of the kept boxes in rank order, N where fewer were kept.
  """
  num_boxes = sorted_boxes.shape[0]
  position = jnp.arange(num_boxes, dtype=jnp.int32)

  slots = jnp.arange(rounds, dtype=jnp.int32)

  def select(state, _):
    in_play, kept, r = state
    first = jnp.argmax(in_play).astype(jnp.int32)  # the first box still in play
    is_first = position == first
    # The first box's row by a masked sum and the round's slot by a mask, not by indexing:
    # the same values, and a loop body without gathers and scatters, which converters
    # (jax2onnx) lower correctly under vmap.
    first_box = jnp.where(is_first[:, None], sorted_boxes, 0.0).sum(axis=0)
    suppressed = box_ops.pairwise_iou(first_box[None], sorted_boxes)[0] > iou_threshold
    if sorted_classes is not None:
      first_class = jnp.where(is_first, sorted_classes, 0).sum()
      suppressed = suppressed & (sorted_classes == first_class)
    kept = jnp.where((slots == r) & jnp.any(in_play), first, kept)
    in_play = in_play & ~suppressed & ~is_first
    return (in_play, kept, r + 1), None

  # `rounds` steps as a scan with a carry only (what a static fori_loop lowers to): the
  # converters that patch fori_loop without a vmap rule (jax2onnx) handle it.
  (_, kept, _), _ = jax.lax.scan(
      select, (sorted_valid, jnp.full((rounds,), num_boxes, jnp.int32), jnp.int32(0)),
      None, length=rounds)
  return kept


def _nms(boxes, scores, iou_threshold, max_output, valid, classes):
  """Shared body of nms / batched_nms; classes [N] int32 or None (class agnostic)."""
  num_boxes = scores.shape[0]
  if valid is None:
    valid = jnp.ones(num_boxes, bool)
  # Rank: valid first, then score descending, then lower index (stable sort).
  order = jax.lax.sort(
      ((~valid).astype(jnp.int32), -scores, jnp.arange(num_boxes, dtype=jnp.int32)),
      num_keys=2, is_stable=True)[2]
  sorted_classes = None if classes is None else classes[order]
  positions = _selection_rounds(boxes[order], valid[order], sorted_classes, iou_threshold,
                                min(max_output, num_boxes))
  if max_output > num_boxes:  # more outputs than boxes: the rest is padding
    positions = jnp.pad(positions, (0, max_output - num_boxes), constant_values=num_boxes)
  out_valid = positions < num_boxes
  indices = jnp.where(out_valid, order[jnp.minimum(positions, num_boxes - 1)], 0)
  return indices.astype(jnp.int32), out_valid


def nms(boxes, scores, iou_threshold, max_output, valid=None):
  """Greedy NMS over one set of boxes.

  Args:
    boxes: [N, 4] float32 x1y1x2y2.
    scores: [N] float32.
    iou_threshold: float; a box is suppressed by a kept box when IoU > iou_threshold.
    max_output: static int, length of the output (may exceed N).
    valid: [N] bool or None (all valid); invalid boxes are never kept nor suppress.

  Returns:
    indices: [max_output] int32 kept box indices, score descending (ties: lower index
      first), 0 where padded.
    valid: [max_output] bool.
  """
  return _nms(boxes, scores, iou_threshold, max_output, valid, None)


def batched_nms(boxes, scores, classes, iou_threshold, max_output, valid=None):
  """Class-aware greedy NMS: boxes of different classes never suppress each other.

  Args:
    boxes: [N, 4] float32 x1y1x2y2.
    scores: [N] float32.
    classes: [N] int32.
    iou_threshold: float; suppression when IoU > iou_threshold within a class.
    max_output: static int, length of the output (may exceed N).
    valid: [N] bool or None (all valid).

  Returns:
    indices: [max_output] int32 kept indices over all classes, score descending (ties:
      lower index first), 0 where padded.
    valid: [max_output] bool.
  """
  return _nms(boxes, scores, iou_threshold, max_output, valid, classes)


def top_k_valid(scores, valid, k: int):
  """The k best valid entries, as a fixed-size selection.

  Args:
    scores: [N] float32.
    valid: [N] bool; invalid entries are never selected.
    k: number of outputs (may exceed N).

  Returns:
    indices: [k] int32 into the N entries, by score descending; 0 where invalid.
    valid: [k] bool.
  """
  if scores.shape[0] < k:  # fewer candidates than outputs: pad with invalid entries
    pad = k - scores.shape[0]
    scores, valid = jnp.pad(scores, (0, pad)), jnp.pad(valid, (0, pad))
  _, top = jax.lax.top_k(jnp.where(valid, scores, -jnp.inf), k)
  keep = valid[top]
  return jnp.where(keep, top, 0).astype(jnp.int32), keep
