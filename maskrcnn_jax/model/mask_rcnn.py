"""Mask R-CNN with FPN: backbone -> fpn -> rpn -> box_head -> mask_head (inference).

Submodules and the torchvision `maskrcnn_resnet50_fpn` state dict prefixes they convert
from: `backbone` <- `backbone.body.`, `fpn` <- `backbone.fpn.`, `rpn` <- `rpn.head.`
(see model/rpn.py), `box_head` <- `roi_heads.box_head.` and `roi_heads.box_predictor.`,
`mask_head` <- `roi_heads.mask_head.` and `roi_heads.mask_predictor.` (see
model/roi_heads.py).

Anchors are NumPy constants computed at trace time from the static padded image shape,
so one compilation serves every batch of that shape (one per canvas).

Input: raw RGB pixels on 0..255 (uint8 from the input pipeline, float32 from the
Predictor's torch-exact resize), zero-padded at the bottom/right; `normalize_images`
normalizes them on the device, as the first op of `propose`.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from maskrcnn_jax import image_info as info_lib
from maskrcnn_jax.model import fpn as fpn_lib
from maskrcnn_jax.model import keypoint_head as keypoint_lib
from maskrcnn_jax.model import losses as losses_lib
from maskrcnn_jax.model import poolers
from maskrcnn_jax.model import postprocess
from maskrcnn_jax.model import resnet
from maskrcnn_jax.model import roi_heads
from maskrcnn_jax.model import rpn as rpn_lib
from maskrcnn_jax.model import targets
from maskrcnn_jax.ops import anchors as anchor_ops
from maskrcnn_jax.ops import keypoints as keypoint_ops
from maskrcnn_jax.ops import mask_targets as mask_ops

_RPN_LEVELS = (2, 3, 4, 5, 6)
_ROI_LEVELS = (2, 3, 4, 5)


def normalize_images(images: jax.Array, image_info: jax.Array, mean_rgb, std_rgb,
                     dtype) -> jax.Array:
  """(images - mean) / std inside each image's valid region, 0 in its padding.

  Args:
    images: [B, H, W, 3] uint8 | float32 raw RGB on 0..255, padded bottom/right.
    image_info: [B, 5] float32 (maskrcnn_jax/image_info.py); the valid region is
      rows < resized height, columns < resized width.
    mean_rgb: [3] per-channel mean (config model.pixel_mean_rgb).
    std_rgb: [3] per-channel std (config model.pixel_std_rgb).
    dtype: compute dtype of the result.

  Returns:
    [B, H, W, 3] in `dtype`; float32 arithmetic, as the host normalization it replaces.
  """
  height, width = images.shape[1:3]
  rows = jnp.arange(height)[None, :, None] < info_lib.resized_height(image_info)[:, None, None]
  cols = jnp.arange(width)[None, None, :] < info_lib.resized_width(image_info)[:, None, None]
  mean = jnp.asarray(mean_rgb, jnp.float32)
  std = jnp.asarray(std_rgb, jnp.float32)
  normalized = (images.astype(jnp.float32) - mean) / std
  return jnp.where((rows & cols)[..., None], normalized, 0.0).astype(dtype)


def _rpn_normalizer(rpn, num_images: int) -> int | None:
  """What the RPN losses divide by: `losses.rpn_losses`' normalizer for `rpn.loss_normalizer`."""
  if rpn.loss_normalizer == 'batch_size':
    return rpn.batch_size_per_image * num_images
  if rpn.loss_normalizer == 'sampled':
    return None
  raise ValueError("config.model.rpn.loss_normalizer must be 'batch_size' or 'sampled'; "
                   f'got {rpn.loss_normalizer!r}')


def _merge_images(*trees):
  """[B, X, ...] leaves -> [B * X, ...]: the losses see one batch-wide set of samples."""
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), trees)


class MaskRCNN(nn.Module):
  """Mask R-CNN; `config` is the `model` section of the config (frozen on construction).

  `__call__` is inference (docs/design.md, "Model outputs"); `propose` exposes the FPN
  features and RPN outputs; `losses` is the training objective.

  Attributes:
    config: `config.model`.
    roi_align_sum_in_loop: RoIAlign's form under differentiation (ops/roi_align.py),
      chosen per backend where the train step is jitted; the same values either way.
  """
  config: Any
  roi_align_sum_in_loop: bool = False

  def __post_init__(self):
    # Linen attributes must be hashable; a FrozenConfigDict is, a ConfigDict is not.
    if not isinstance(self.config, ml_collections.FrozenConfigDict):
      object.__setattr__(self, 'config', ml_collections.FrozenConfigDict(self.config))
    super().__post_init__()

  def setup(self):
    c = self.config
    if c.mask_head.resolution != 2 * c.mask_head.pooled_size:
      raise ValueError(f'mask_head.resolution ({c.mask_head.resolution}) must be twice '
                       f'mask_head.pooled_size ({c.mask_head.pooled_size})')
    if len(c.anchors.sizes) != len(_RPN_LEVELS):
      raise ValueError(f'anchors.sizes needs one size per level P2..P6, got {c.anchors.sizes}')
    dtype = jnp.dtype(c.dtype)
    b = c.backbone
    self.backbone = resnet.ResNet(
        depth=b.depth, norm=b.norm, frozen_bn_eps=b.frozen_bn_eps,
        group_norm_groups=b.group_norm_groups, freeze_at=b.freeze_at,
        stride_in_1x1=b.stride_in_1x1, base_width=b.base_width, groups=b.groups,
        width_per_group=b.width_per_group, dtype=dtype)
    self.fpn = fpn_lib.FPN(channels=c.fpn.channels, dtype=dtype)
    self.rpn = rpn_lib.RPNHead(num_anchors=len(c.anchors.aspect_ratios), dtype=dtype)
    pooler = functools.partial(poolers.RoIPooler.from_config, c,
                               sum_in_loop=self.roi_align_sum_in_loop)
    self.box_pooler = pooler(c.box_head.pooled_size)
    self.box_head = roi_heads.BoxHead(num_classes=c.num_classes, fc_dim=c.box_head.fc_dim,
                                      dtype=dtype)
    if c.mask_head.enabled:
      self.mask_pooler = pooler(c.mask_head.pooled_size)
      self.mask_head = roi_heads.MaskHead(
          num_classes=c.num_classes, conv_dim=c.mask_head.conv_dim,
          num_convs=c.mask_head.num_convs, class_agnostic=c.class_agnostic_mask, dtype=dtype)
    k = c.keypoint_head
    if k.enabled:
      if k.heatmap_size != 4 * k.pooled_size:
        raise ValueError(f'keypoint_head.heatmap_size ({k.heatmap_size}) must be 4 x '
                         f'keypoint_head.pooled_size ({k.pooled_size})')
      self.keypoint_pooler = pooler(k.pooled_size)
      self.keypoint_head = keypoint_lib.KeypointHead(
          num_keypoints=k.num_keypoints, conv_dim=k.conv_dim, num_convs=k.num_convs,
          dtype=dtype)

  def _anchors(self, height: int, width: int) -> list:
    """Per level P2..P6 [H_l * W_l * A, 4] NumPy anchors for a padded image size."""
    a = self.config.anchors
    return anchor_ops.fpn_anchors(
        height, width, min_level=_RPN_LEVELS[0], max_level=_RPN_LEVELS[-1],
        sizes=tuple(a.sizes), aspect_ratios=tuple(a.aspect_ratios), round_base=a.round_base,
        stride_from_image=a.stride_from_image)

  def propose(self, images: jax.Array, image_info: jax.Array,
              train: bool = False) -> dict[str, Any]:
    """FPN features, RPN outputs and proposals.

    Args:
      images: [B, H, W, 3] uint8 | float32 raw RGB 0..255, zero-padded (H, W multiples
        of 64).
      image_info: [B, 5] float32 (maskrcnn_jax/image_info.py).
      train: use the `*_train` proposal counts instead of `*_test`.

    Returns:
      features: {'p2'..'p6': [B, H / 2**l, W / 2**l, C]} in the compute dtype.
      objectness: per level P2..P6 [B, N_l] float32 logits.
      rpn_deltas: per level [B, N_l, 4] float32.
      proposals: [B, P, 4] float32; proposal_valid: [B, P] bool;
      proposal_scores: [B, P] float32 logits (see `rpn.select_proposals`).
    """
    c = self.config
    features = self.fpn(self.backbone(normalize_images(
        images, image_info, c.pixel_mean_rgb, c.pixel_std_rgb, jnp.dtype(c.dtype))))
    objectness, deltas = self.rpn([features[f'p{l}'] for l in _RPN_LEVELS])
    anchors = self._anchors(images.shape[1], images.shape[2])
    proposals, proposal_valid, proposal_scores = rpn_lib.select_proposals(
        objectness, deltas, anchors, image_info,
        pre_nms_topk=c.rpn.pre_nms_topk_train if train else c.rpn.pre_nms_topk_test,
        post_nms_topk=c.rpn.post_nms_topk_train if train else c.rpn.post_nms_topk_test,
        nms_threshold=c.rpn.nms_threshold, min_box_size=c.rpn.min_box_size,
        weights=tuple(c.rpn.box_coder_weights), clamp=c.box_coder_clamp)
    return {
        'features': features,
        'objectness': objectness,
        'rpn_deltas': deltas,
        'proposals': proposals,
        'proposal_valid': proposal_valid,
        'proposal_scores': proposal_scores,
    }

  def __call__(self, images: jax.Array, image_info: jax.Array) -> dict[str, jax.Array]:
    """Inference.

    Args:
      images: [B, H, W, 3] uint8 | float32 raw RGB 0..255, zero-padded (H, W multiples
        of 64).
      image_info: [B, 5] float32 (maskrcnn_jax/image_info.py).

    Returns:
      boxes: [B, D, 4] float32 in the resized frame (the canvas frame: transposed where
      image_info says so); scores: [B, D] float32 sorted
      descending; classes: [B, D] int32 in 1..K (0 where invalid); masks: [B, D, M, M]
      float32 probabilities (M = 2 * mask_head.pooled_size; only with the mask head);
      valid: [B, D] bool; with the keypoint head, keypoint_heatmaps: [B, D, K, H, H]
      float32 logits (H = keypoint_head.heatmap_size), canvas frame.
    """
    c = self.config
    rpn_out = self.propose(images, image_info)
    roi_features = [rpn_out['features'][f'p{l}'] for l in _ROI_LEVELS]
    class_logits, box_deltas = self.box_head(
        self.box_pooler(roi_features, rpn_out['proposals']))
    detections = postprocess.detect_boxes(
        class_logits, box_deltas, rpn_out['proposals'], rpn_out['proposal_valid'],
        image_info, weights=tuple(c.roi_heads.box_coder_weights), clamp=c.box_coder_clamp,
        score_threshold=c.roi_heads.score_threshold,
        nms_threshold=c.roi_heads.nms_threshold,
        detections_per_image=c.roi_heads.detections_per_image,
        pre_nms_topk=c.roi_heads.pre_nms_topk)
    pooled = self._pool_for_heads(roi_features, detections['boxes'])
    if c.mask_head.enabled:
      detections['masks'] = postprocess.select_mask_probs(
          self.mask_head(pooled['mask']), detections['classes'], mode=c.mask_loss)
    if c.keypoint_head.enabled:
      detections['keypoint_heatmaps'] = jnp.moveaxis(
          self.keypoint_head(pooled['keypoint']), -1, 2)
    return detections

  def losses(self, batch: dict[str, jax.Array], key: jax.Array) -> dict[str, jax.Array]:
    """The multi-task training loss L = L_rpn_cls + L_rpn_box + L_cls + L_box + L_mask (+ L_kp).

    Args:
      batch: the batch of docs/design.md (images, image_info, gt_boxes, gt_classes,
        gt_masks, gt_is_crowd; with the keypoint head gt_keypoints [B, N, K, 3]); padded
        instances have class 0.
      key: randomness for the anchor and RoI samplers.

    Returns:
      scalar float32 losses `rpn_cls`, `rpn_box`, `cls`, `box`, `mask` (with the mask
      head), `keypoint` (with the keypoint head), `total`, and
      `fg_fraction` (foreground share of the sampled RoIs). Each loss is normalized over
      the samples of the whole batch, as torchvision and Detectron2 do.
    """
    c = self.config
    images = batch['images']
    num_images = images.shape[0]
    gt_boxes, gt_classes = batch['gt_boxes'], batch['gt_classes']
    gt_valid, gt_is_crowd = gt_classes > 0, batch['gt_is_crowd']
    rpn_key, roi_key = jax.random.split(key)

    rpn_out = self.propose(images, batch['image_info'], train=True)
    anchors = jnp.asarray(np.concatenate(self._anchors(images.shape[1], images.shape[2])))
    rpn_targets = jax.vmap(functools.partial(
        targets.rpn_targets, anchors, fg_iou=c.rpn.fg_iou_threshold,
        bg_iou=c.rpn.bg_iou_threshold, batch_size=c.rpn.batch_size_per_image,
        positive_fraction=c.rpn.positive_fraction, weights=tuple(c.rpn.box_coder_weights)))(
            gt_boxes, gt_valid, gt_is_crowd, jax.random.split(rpn_key, num_images))
    rpn_cls, rpn_box = losses_lib.rpn_losses(
        *_merge_images(jnp.concatenate(rpn_out['objectness'], axis=1),
                       jnp.concatenate(rpn_out['rpn_deltas'], axis=1), rpn_targets),
        box_loss=c.rpn.box_loss, beta=c.rpn.smooth_l1_beta,
        normalizer=_rpn_normalizer(c.rpn, num_images))

    roi_targets = jax.vmap(functools.partial(
        targets.roi_targets, fg_iou=c.roi_heads.fg_iou_threshold,
        batch_size=c.roi_heads.batch_size_per_image,
        positive_fraction=c.roi_heads.positive_fraction,
        weights=tuple(c.roi_heads.box_coder_weights)))(
            rpn_out['proposals'], rpn_out['proposal_valid'], gt_boxes, gt_classes, gt_valid,
            gt_is_crowd, jax.random.split(roi_key, num_images))
    roi_features = [rpn_out['features'][f'p{l}'] for l in _ROI_LEVELS]
    class_logits, box_deltas = self.box_head(
        self.box_pooler(roi_features, roi_targets['rois']))
    cls, box = losses_lib.box_head_losses(
        *_merge_images(class_logits, box_deltas, roi_targets),
        box_loss=c.roi_heads.box_loss, beta=c.roi_heads.smooth_l1_beta)

    # Sampled foreground RoIs come first, at most batch_size * positive_fraction of them,
    # so the mask head only runs on that static prefix.
    num_fg = int(c.roi_heads.batch_size_per_image * c.roi_heads.positive_fraction)
    fg = jax.tree.map(lambda x: x[:, :num_fg], roi_targets)
    terms = {'rpn_cls': rpn_cls, 'rpn_box': rpn_box, 'cls': cls, 'box': box}
    pooled = self._pool_for_heads(roi_features, fg['rois'])
    if c.mask_head.enabled:
      mask_logits = self.mask_head(pooled['mask'])
      mask_targets = jax.vmap(functools.partial(
          mask_ops.mask_targets, output_size=c.mask_head.resolution))(
              batch['gt_masks'], gt_boxes, fg['rois'], fg['matched_gt'])
      terms['mask'] = losses_lib.mask_loss(
          *_merge_images(mask_logits, mask_targets, fg['labels'], fg['is_foreground']),
          mode=c.mask_loss, class_agnostic=c.class_agnostic_mask)
    if c.keypoint_head.enabled:
      terms['keypoint'] = self._keypoint_loss(pooled['keypoint'], fg, batch['gt_keypoints'])
    terms['total'] = sum(terms.values())
    sampled = jnp.maximum(jnp.sum(roi_targets['roi_valid']), 1)
    terms['fg_fraction'] = jnp.sum(roi_targets['is_foreground']) / sampled
    return terms

  def _pool_for_heads(self, roi_features: list, boxes: jax.Array) -> dict[str, jax.Array]:
    """RoI features of `boxes` for the mask and keypoint heads that are on.

    Heads whose poolers are equal (both 14 x 14 with the same settings) share one
    pooling: the same features, half the gathers and their scatter-add gradient.

    Args:
      roi_features: per level [B, H_l, W_l, C] (P2..P5).
      boxes: [B, R, 4] float32 x1y1x2y2 pixels.

    Returns:
      {'mask': ..., 'keypoint': ...} for the enabled heads, each [B, R, S, S, C].
    """
    c = self.config
    pooled = {}
    if c.mask_head.enabled:
      pooled['mask'] = self.mask_pooler(roi_features, boxes)
    if c.keypoint_head.enabled:
      pooled['keypoint'] = (pooled['mask'] if 'mask' in pooled
                            and self.keypoint_pooler == self.mask_pooler
                            else self.keypoint_pooler(roi_features, boxes))
    return pooled

  def _keypoint_loss(self, pooled: jax.Array, fg: dict[str, jax.Array],
                     gt_keypoints: jax.Array) -> jax.Array:
    """The keypoint loss on the foreground prefix `fg` of the RoI targets.

    Args:
      pooled: [B, F, S, S, C] RoI features of `fg['rois']`.
      fg: `roi_targets` sliced to its first F (foreground) slots: rois [B, F, 4],
        matched_gt [B, F], is_foreground [B, F].
      gt_keypoints: [B, N, K, 3] float32 x, y, visibility (resized frame).
    """
    k = self.config.keypoint_head
    logits = self.keypoint_head(pooled)  # [B, F, H, H, K]
    matched = jnp.take_along_axis(gt_keypoints, fg['matched_gt'][..., None, None], axis=1)
    cells, valid = jax.vmap(functools.partial(
        keypoint_ops.keypoint_targets, heatmap_size=k.heatmap_size))(matched, fg['rois'])
    valid &= fg['is_foreground'][..., None]
    num_images, num_fg = fg['rois'].shape[:2]
    normalizer = None if k.normalize_by_visible else float(
        num_images * num_fg * k.num_keypoints)
    return k.loss_weight * keypoint_ops.keypoint_loss(
        *_merge_images(logits, cells, valid), normalizer=normalizer)
