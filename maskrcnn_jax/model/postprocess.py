"""Inference post-processing: box head outputs -> fixed-size detections, mask probabilities.

`detect_boxes` is torchvision's `RoIHeads.postprocess_detections` with static shapes;
`select_mask_probs` is its `maskrcnn_inference` (the predicted class's mask, sigmoid), or
the per-pixel softmax of the `mask_loss=softmax` ablation.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

from maskrcnn_jax import image_info as info_lib
from maskrcnn_jax.ops import boxes as box_ops
from maskrcnn_jax.ops import nms as nms_ops


def detect_boxes(
    class_logits: jax.Array,
    box_deltas: jax.Array,
    proposals: jax.Array,
    proposal_valid: jax.Array,
    image_info: jax.Array,
    *,
    weights: Sequence[float],
    clamp: float,
    score_threshold: float,
    nms_threshold: float,
    detections_per_image: int,
    pre_nms_topk: int,
    min_size: float = 1e-2,
) -> dict[str, jax.Array]:
  """Per-class boxes, scored, filtered and suppressed to D detections per image.

  Each (proposal, foreground class) pair is a candidate: softmax score, class-specific
  decoded box clipped to the image. Candidates scoring <= `score_threshold` or with a
  side < `min_size` are dropped, NMS runs per class, and the D best survivors over all
  classes are kept, as torchvision's class-aware batched_nms. Only the `pre_nms_topk`
  best candidates enter the NMS (one batched NMS over them): greedy decisions depend
  only on higher-scored boxes, so the result is the same unless fewer than D survive
  among those candidates while more valid ones remain below them.

  Args:
    class_logits: [B, R, K + 1] float32.
    box_deltas: [B, R, K + 1, 4] float32.
    proposals: [B, R, 4] float32 x1y1x2y2 pixels.
    proposal_valid: [B, R] bool.
    image_info: [B, 5] float32 (maskrcnn_jax/image_info.py).
    weights: box coder weights (wx, wy, ww, wh).
    clamp: dw, dh clamp when decoding.
    score_threshold: minimum (exclusive) class probability.
    nms_threshold: IoU above which a lower-scored box of the same class is suppressed.
    detections_per_image: D.
    pre_nms_topk: C, candidates (proposal, class) entering the NMS.
    min_size: minimum box side (torchvision's remove_small_boxes(1e-2)).

  Returns:
    boxes: [B, D, 4] float32 in the resized frame, zeros where invalid.
    scores: [B, D] float32, sorted descending over the valid entries, zeros where invalid.
    classes: [B, D] int32 in 1..K, 0 where invalid.
    valid: [B, D] bool.
  """
  num_classes = class_logits.shape[2] - 1
  num_candidates = min(pre_nms_topk, class_logits.shape[1] * num_classes)

  def per_image(logits, deltas, proposals, proposal_valid, info):
    scores = jax.nn.softmax(logits, axis=-1)[:, 1:]  # [R, K]
    deltas = deltas[:, 1:]  # [R, K, 4]
    reference = jnp.broadcast_to(proposals[:, None], deltas.shape)
    boxes = box_ops.decode_boxes(deltas, reference, weights, clamp)
    boxes = box_ops.clip_boxes(boxes, info_lib.resized_height(info),
                               info_lib.resized_width(info))  # [R, K, 4]
    sides = boxes[..., 2:] - boxes[..., :2]
    valid = (proposal_valid[:, None] & (scores > score_threshold)
             & jnp.all(sides >= min_size, axis=-1))
    classes = jnp.broadcast_to(jnp.arange(1, num_classes + 1, dtype=jnp.int32), scores.shape)
    # Proposal-major candidates, as torchvision flattens them; the best C go to one
    # class-aware NMS, whose decisions on them are those of NMS over all candidates.
    boxes, scores, valid, classes = (
        boxes.reshape(-1, 4), scores.reshape(-1), valid.reshape(-1), classes.reshape(-1))
    top, top_valid = nms_ops.top_k_valid(scores, valid, num_candidates)
    boxes, scores, classes = boxes[top], scores[top], classes[top]
    keep, valid = nms_ops.batched_nms(boxes, scores, classes, nms_threshold,
                                      detections_per_image, top_valid)
    return {
        'boxes': jnp.where(valid[:, None], boxes[keep], 0.0),
        'scores': jnp.where(valid, scores[keep], 0.0),
        'classes': jnp.where(valid, classes[keep], 0),
        'valid': valid,
    }

  return jax.vmap(per_image)(class_logits, box_deltas, proposals, proposal_valid, image_info)


def select_mask_probs(mask_logits: jax.Array, classes: jax.Array,
                      mode: str = 'sigmoid') -> jax.Array:
  """Each detection's mask probabilities in its own class channel (or the only channel).

  Args:
    mask_logits: [B, D, M, M, C] float32, C = K + 1 or 1 (class-agnostic).
    classes: [B, D] int32 in 0..K.
    mode: how the masks were trained (config `mask_loss`): 'sigmoid' per channel, or
      'softmax' over the K + 1 channels of each pixel.

  Returns:
    [B, D, M, M] float32 probabilities.
  """
  if mask_logits.shape[-1] == 1:
    return jax.nn.sigmoid(mask_logits[..., 0])
  if mode == 'softmax':
    probs = jax.nn.softmax(mask_logits, axis=-1)
  elif mode == 'sigmoid':
    probs = jax.nn.sigmoid(mask_logits)
  else:
    raise ValueError(f"mask mode must be 'sigmoid' or 'softmax', got {mode!r}")
  return jnp.take_along_axis(probs, classes[:, :, None, None, None], axis=-1)[..., 0]
