"""Region proposal network: the shared conv head and fixed-size proposal selection.

`RPNHead` runs one 3x3 conv (+ReLU) and two 1x1 convs over every FPN level (P2..P6),
sharing the weights between levels. Its parameters map to torchvision's
`maskrcnn_resnet50_fpn` state dict (`rpn.head.` prefix) as follows, with conv kernels
transposed from PyTorch's [out, in, kh, kw] to Flax's [kh, kw, in, out]:

  conv/kernel, conv/bias              <- rpn.head.conv.0.0.weight, rpn.head.conv.0.0.bias
  cls_logits/kernel, cls_logits/bias  <- rpn.head.cls_logits.weight, .bias  (A channels)
  bbox_pred/kernel, bbox_pred/bias    <- rpn.head.bbox_pred.weight, .bias   (A * 4 channels)

Output channels keep torchvision's order: objectness channel a is anchor a, delta channel
4 * a + j is coordinate j of anchor a, so an NHWC output reshaped to [B, H * W * A(, 4)]
lines up with `ops.anchors.level_anchors`.

`select_proposals` is torchvision's `RegionProposalNetwork.filter_proposals` with static
shapes: per-level top-k, decode, clip, small-box masking, per-level NMS, global top-k.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskrcnn_jax import image_info as info_lib
from maskrcnn_jax.ops import boxes as box_ops
from maskrcnn_jax.ops import nms as nms_ops


class RPNHead(nn.Module):
  """Objectness logits and box deltas for every anchor of every level.

  Attributes:
    num_anchors: A, anchors per feature-map location.
    dtype: compute dtype; outputs are float32.
  """
  num_anchors: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
    """Args:
      features: per level [B, H_l, W_l, C] (P2..P6).

    Returns:
      objectness: per level [B, H_l * W_l * A] float32 logits.
      deltas: per level [B, H_l * W_l * A, 4] float32 box deltas.
    """
    init = nn.initializers.normal(stddev=0.01)  # as torchvision's RPNHead
    channels = features[0].shape[-1]
    conv = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                   kernel_init=init, name='conv')
    cls_logits = nn.Conv(self.num_anchors, (1, 1), dtype=self.dtype, kernel_init=init,
                         name='cls_logits')
    bbox_pred = nn.Conv(self.num_anchors * 4, (1, 1), dtype=self.dtype, kernel_init=init,
                        name='bbox_pred')
    objectness, deltas = [], []
    for x in features:
      batch, height, width, _ = x.shape
      t = nn.relu(conv(x))
      objectness.append(
          cls_logits(t).astype(jnp.float32).reshape(batch, height * width * self.num_anchors))
      deltas.append(
          bbox_pred(t).astype(jnp.float32).reshape(batch, height * width * self.num_anchors, 4))
    return objectness, deltas


def select_proposals(
    objectness: Sequence[jax.Array],
    deltas: Sequence[jax.Array],
    anchors: Sequence[np.ndarray],
    image_info: jax.Array,
    *,
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_threshold: float,
    min_box_size: float,
    weights: Sequence[float],
    clamp: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Fixed-size proposals per image, as torchvision's `filter_proposals`.

  Per level: the top `pre_nms_topk` anchors by objectness (all if the level has fewer)
  are decoded, clipped to the image, masked when a side is below `min_box_size`; NMS
  runs within each level (one batched NMS with the level as the class, as torchvision)
  and the `post_nms_topk` best survivors over all levels are returned. Sorting by logits
  gives torchvision's order (it sorts by sigmoid) without ties from saturated
  probabilities. No gradient flows into the proposals.

  Args:
    objectness: per level [B, N_l] float32 logits.
    deltas: per level [B, N_l, 4] float32 deltas.
    anchors: per level [N_l, 4] float32 x1y1x2y2 pixels.
    image_info: [B, 5] float32 (maskrcnn_jax/image_info.py).
    pre_nms_topk: anchors kept per level before NMS.
    post_nms_topk: P, proposals returned per image.
    nms_threshold: IoU above which a lower-scored box of the same level is suppressed.
    min_box_size: proposals with a side below this are invalid.
    weights: box coder weights (wx, wy, ww, wh).
    clamp: dw, dh clamp when decoding.

  Returns:
    proposals: [B, P, 4] float32 x1y1x2y2 pixels, zeros where invalid.
    proposal_valid: [B, P] bool.
    proposal_scores: [B, P] float32 objectness logits, sorted descending over the valid
      entries, zeros where invalid.
  """
  objectness = [jax.lax.stop_gradient(o) for o in objectness]
  deltas = [jax.lax.stop_gradient(d) for d in deltas]

  def per_image(objectness, deltas, info):
    all_boxes, all_scores, all_valid, all_levels = [], [], [], []
    for level, (level_objectness, level_deltas, level_anchors) in enumerate(
        zip(objectness, deltas, anchors)):
      k = min(pre_nms_topk, level_objectness.shape[0])
      scores, top = jax.lax.top_k(level_objectness, k)
      boxes = box_ops.decode_boxes(level_deltas[top], jnp.asarray(level_anchors)[top],
                                   weights, clamp)
      boxes = box_ops.clip_boxes(boxes, info_lib.resized_height(info),
                                 info_lib.resized_width(info))
      sides = boxes[:, 2:] - boxes[:, :2]
      all_boxes.append(boxes)
      all_scores.append(scores)
      all_valid.append(jnp.all(sides >= min_box_size, axis=-1))
      all_levels.append(jnp.full((k,), level, jnp.int32))
    boxes = jnp.concatenate(all_boxes)
    scores = jnp.concatenate(all_scores)
    # One class-aware NMS with the level as the class: levels never suppress each other,
    # and its first P kept boxes are the P best of the per-level NMS results.
    keep, valid = nms_ops.batched_nms(boxes, scores, jnp.concatenate(all_levels),
                                      nms_threshold, post_nms_topk, jnp.concatenate(all_valid))
    return (jnp.where(valid[:, None], boxes[keep], 0.0), valid,
            jnp.where(valid, scores[keep], 0.0))

  return jax.vmap(per_image)(list(objectness), list(deltas), image_info)
