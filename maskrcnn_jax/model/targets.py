"""Training targets for the RPN and the box head, per image, with static shapes.

torchvision's `Matcher`, `BalancedPositiveNegativeSampler`, `RegionProposalNetwork.
assign_targets_to_anchors` and `RoIHeads.select_training_samples`, with Detectron's crowd
handling: crowd boxes are never match targets, and a candidate that would be background
but overlaps a crowd box is ignored. Padded gt (`gt_valid` False) never matches. The
caller vmaps over the batch.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

from maskrcnn_jax.ops import boxes as box_ops
from maskrcnn_jax.ops import sampling


def match(iou: jax.Array, fg_threshold: float, bg_threshold: float,
          allow_low_quality: bool) -> tuple[jax.Array, jax.Array]:
  """Assigns each candidate its best gt and a label (torchvision `Matcher`).

  Args:
    iou: [N_gt, M] float32, -1 for invalid pairs (padded gt or candidates).
    fg_threshold: IoU at or above which a candidate is foreground.
    bg_threshold: IoU below which a candidate is background; in between it is ignored.
    allow_low_quality: also make foreground, for each gt, every candidate whose IoU equals
      that gt's best IoU (ties included), when that best is > 0 (`set_low_quality_matches_`).

  Returns:
    matched_gt: [M] int32 argmax over gt (the first on ties; 0 when no gt is valid).
    labels: [M] int32, 1 foreground, 0 background, -1 ignored.
  """
  matched_gt = jnp.argmax(iou, axis=0).astype(jnp.int32)
  best = jnp.max(iou, axis=0)
  labels = jnp.where(best >= fg_threshold, 1, jnp.where(best < bg_threshold, 0, -1))
  if allow_low_quality:
    best_per_gt = jnp.max(iou, axis=1, keepdims=True)  # [N_gt, 1]; -1 for padded gt
    # torchvision keeps the argmax gt for these candidates, not the gt they are best for.
    low_quality = jnp.any((iou == best_per_gt) & (best_per_gt > 0.0), axis=0)
    labels = jnp.where(low_quality, 1, labels)
  return matched_gt, labels.astype(jnp.int32)


def _match_with_crowd(gt_boxes, gt_valid, gt_is_crowd, candidates, candidate_valid,
                      fg_threshold, bg_threshold, allow_low_quality, crowd_threshold):
  """`match` against the non-crowd gt; background that overlaps a crowd box is ignored.

  gt_boxes [N, 4], gt_valid [N], gt_is_crowd [N], candidates [M, 4], candidate_valid [M]
  or None; a background candidate with IoU >= crowd_threshold with a crowd box gets -1.
  Returns (matched_gt [M] int32, labels [M] int32 {1, 0, -1}).
  """
  iou = box_ops.pairwise_iou(gt_boxes, candidates, gt_valid, candidate_valid)  # [N, M]
  crowd = gt_is_crowd[:, None]
  matched_gt, labels = match(jnp.where(crowd, -1.0, iou), fg_threshold, bg_threshold,
                             allow_low_quality)
  crowd_iou = jnp.max(jnp.where(crowd, iou, -1.0), axis=0)
  labels = jnp.where((labels == 0) & (crowd_iou >= crowd_threshold), -1, labels)
  return matched_gt, labels


def rpn_targets(anchors: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array,
                gt_is_crowd: jax.Array, key: jax.Array, *, fg_iou: float = 0.7,
                bg_iou: float = 0.3, batch_size: int = 256, positive_fraction: float = 0.5,
                weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> dict[str, jax.Array]:
  """Sampled anchor labels and regression targets for one image.

  Anchors with IoU >= fg_iou, or the best anchors of a gt (low-quality matches), are
  positive; IoU < bg_iou negative, unless IoU >= bg_iou with a crowd box (ignored). Then
  `batch_size` anchors are sampled, at most `positive_fraction` of them positive.

  Args:
    anchors: [A, 4] float32 x1y1x2y2 pixels.
    gt_boxes: [N, 4] float32 x1y1x2y2 pixels.
    gt_valid: [N] bool, False for padding.
    gt_is_crowd: [N] bool.
    key: PRNG key for the sampler.
    fg_iou, bg_iou: matcher thresholds.
    batch_size: anchors sampled per image.
    positive_fraction: largest share of positives in the sample.
    weights: box coder weights (wx, wy, ww, wh).

  Returns:
    labels: [A] int32, 1 sampled positive, 0 sampled negative, -1 not sampled.
    box_targets: [A, 4] float32 deltas to the matched gt; zeros where labels != 1.
  """
  num_anchors = anchors.shape[0]
  matched_gt, labels = _match_with_crowd(gt_boxes, gt_valid, gt_is_crowd, anchors, None,
                                         fg_iou, bg_iou, True, bg_iou)
  indices, valid, is_positive = sampling.sample_balanced(
      key, labels == 1, labels == 0, batch_size, positive_fraction)
  # Padding slots scatter out of bounds and are dropped, so they never overwrite anchor 0.
  sampled = jnp.full((num_anchors,), -1, jnp.int32).at[
      jnp.where(valid, indices, num_anchors)].set(is_positive.astype(jnp.int32), mode='drop')
  box_targets = box_ops.encode_boxes(jnp.take(gt_boxes, matched_gt, axis=0), anchors,
                                     tuple(weights))
  return {'labels': sampled,
          'box_targets': jnp.where((sampled == 1)[:, None], box_targets, 0.0)}


def roi_targets(proposals: jax.Array, proposal_valid: jax.Array, gt_boxes: jax.Array,
                gt_classes: jax.Array, gt_valid: jax.Array, gt_is_crowd: jax.Array,
                key: jax.Array, *, fg_iou: float = 0.5, batch_size: int = 512,
                positive_fraction: float = 0.25,
                weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0)) -> dict[str, jax.Array]:
  """Samples the RoIs the box head trains on, with their class and box targets.

  The valid non-crowd gt boxes join the proposals (torchvision `add_gt_proposals`); a
  candidate is foreground at IoU >= fg_iou, background below it (no ignore band, no
  low-quality matches), ignored when background but IoU >= fg_iou with a crowd box.

  Args:
    proposals: [P, 4] float32 x1y1x2y2 pixels.
    proposal_valid: [P] bool.
    gt_boxes: [N, 4] float32 x1y1x2y2 pixels.
    gt_classes: [N] int32 in 1..K (0 for padding).
    gt_valid: [N] bool.
    gt_is_crowd: [N] bool.
    key: PRNG key for the sampler.
    fg_iou: foreground / background IoU threshold.
    batch_size: S, RoIs sampled per image.
    positive_fraction: largest share of foreground in the sample.
    weights: box coder weights (wx, wy, ww, wh).

  Returns (S = batch_size; foreground slots first, then background, then padding):
    rois: [S, 4] float32, zeros where not roi_valid.
    roi_valid: [S] bool.
    labels: [S] int32, the gt class for foreground, 0 for background and padding.
    box_targets: [S, 4] float32 deltas to the matched gt, zeros unless foreground.
    matched_gt: [S] int32 index into the gt arrays, 0 where not roi_valid (meaningful for
      foreground only).
    is_foreground: [S] bool.
  """
  candidates = jnp.concatenate([proposals, gt_boxes])  # [P + N, 4]
  candidate_valid = jnp.concatenate([proposal_valid, gt_valid & ~gt_is_crowd])
  matched_gt, labels = _match_with_crowd(gt_boxes, gt_valid, gt_is_crowd, candidates,
                                         candidate_valid, fg_iou, fg_iou, False, fg_iou)
  indices, valid, is_foreground = sampling.sample_balanced(
      key, (labels == 1) & candidate_valid, (labels == 0) & candidate_valid, batch_size,
      positive_fraction)
  rois = jnp.where(valid[:, None], candidates[indices], 0.0)
  matched_gt = jnp.where(valid, matched_gt[indices], 0)
  box_targets = box_ops.encode_boxes(jnp.take(gt_boxes, matched_gt, axis=0), rois, tuple(weights))
  return {
      'rois': rois,
      'roi_valid': valid,
      'labels': jnp.where(is_foreground, jnp.take(gt_classes, matched_gt), 0).astype(jnp.int32),
      'box_targets': jnp.where(is_foreground[:, None], box_targets, 0.0),
      'matched_gt': matched_gt.astype(jnp.int32),
      'is_foreground': is_foreground,
  }
