"""Mask R-CNN training losses, normalized as torchvision's detection losses.

Each function takes the targets of `model.targets` (for one image, or several images
merged along the sample axis) and returns scalar float32 losses. Every normalizer is
floored at 1 so an empty sample gives a zero loss, never NaN.
"""

import jax
import jax.numpy as jnp


def smooth_l1(x: jax.Array, beta: float) -> jax.Array:
  """Elementwise smooth L1 (Fast R-CNN eq. 3): 0.5 x^2 / beta if |x| < beta else |x| - beta / 2.

  Args:
    x: [...] float32 differences.
    beta: quadratic-region width; below 1e-5 this is plain L1 (as torchvision).

  Returns:
    [...] float32.
  """
  absolute = jnp.abs(x)
  if beta < 1e-5:
    return absolute
  return jnp.where(absolute < beta, 0.5 * x * x / beta, absolute - 0.5 * beta)


def _box_loss(deltas: jax.Array, targets: jax.Array, box_loss: str, beta: float) -> jax.Array:
  """[..., 4] deltas and targets -> [...] box regression loss summed over coordinates."""
  if box_loss not in ('smooth_l1', 'l1'):
    raise ValueError(f"box_loss must be 'smooth_l1' or 'l1'; got {box_loss!r}")
  return jnp.sum(smooth_l1(deltas - targets, beta if box_loss == 'smooth_l1' else 0.0),
                 axis=-1)


def _binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Elementwise BCE with logits, stable for large |logits|."""
  return -(targets * jax.nn.log_sigmoid(logits) + (1.0 - targets) * jax.nn.log_sigmoid(-logits))


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """[..., C] logits, [...] int labels -> [...] softmax cross-entropy."""
  label_logits = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - label_logits


def rpn_losses(objectness: jax.Array, deltas: jax.Array, targets: dict[str, jax.Array],
               box_loss: str = 'smooth_l1', beta: float = 1.0 / 9.0,
               normalizer: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Objectness and anchor regression losses (torchvision `RegionProposalNetwork.compute_loss`).

  Args:
    objectness: [A] float32 logits.
    deltas: [A, 4] float32 predicted deltas.
    targets: `rpn_targets` output: labels [A] int32 {1, 0, -1 unsampled}, box_targets [A, 4].
    box_loss: 'smooth_l1' or 'l1'.
    beta: smooth L1 beta.
    normalizer: what both sums are divided by; None: the number of sampled anchors
      (torchvision), else a fixed count such as Detectron2's batch size per image x
      images. The two agree whenever the sampler fills its batch.

  Returns:
    cls: BCE with logits summed over the sampled anchors / normalizer.
    box: regression loss summed over positive anchors / normalizer.
  """
  labels = targets['labels']
  sampled = labels >= 0
  positive = labels == 1
  num_sampled = jnp.maximum(jnp.sum(sampled), 1) if normalizer is None else normalizer
  bce = _binary_cross_entropy(objectness, positive.astype(jnp.float32))
  cls = jnp.sum(jnp.where(sampled, bce, 0.0)) / num_sampled
  box = _box_loss(deltas, targets['box_targets'], box_loss, beta)
  return cls, jnp.sum(jnp.where(positive, box, 0.0)) / num_sampled


def box_head_losses(class_logits: jax.Array, box_deltas: jax.Array,
                    targets: dict[str, jax.Array], box_loss: str = 'smooth_l1',
                    beta: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Classification and class-specific box losses (torchvision `fastrcnn_loss`).

  Args:
    class_logits: [S, K + 1] float32.
    box_deltas: [S, K + 1, 4] float32.
    targets: `roi_targets` output (roi_valid [S], labels [S], box_targets [S, 4],
      is_foreground [S]).
    box_loss: 'smooth_l1' or 'l1'.
    beta: smooth L1 beta.

  Returns:
    cls: softmax cross-entropy, mean over the valid sampled RoIs.
    box: regression loss of the gt class's deltas summed over foreground RoIs / number
      of valid sampled RoIs.
  """
  valid = targets['roi_valid']
  labels = targets['labels']
  num_sampled = jnp.maximum(jnp.sum(valid), 1)
  cls = jnp.sum(jnp.where(valid, _cross_entropy(class_logits, labels), 0.0)) / num_sampled
  class_deltas = jnp.take_along_axis(box_deltas, labels[:, None, None], axis=1)[:, 0]  # [S, 4]
  box = _box_loss(class_deltas, targets['box_targets'], box_loss, beta)
  return cls, jnp.sum(jnp.where(targets['is_foreground'], box, 0.0)) / num_sampled


def mask_loss(mask_logits: jax.Array, mask_targets: jax.Array, labels: jax.Array,
              is_foreground: jax.Array, mode: str = 'sigmoid',
              class_agnostic: bool = False) -> jax.Array:
  """Mask loss over the foreground RoIs (torchvision `maskrcnn_loss`, or softmax ablation).

  Args:
    mask_logits: [S, M, M, C] float32, C = K + 1 (or 1 when class_agnostic).
    mask_targets: [S, M, M] float32 in {0, 1}.
    labels: [S] int32 gt class of each RoI (1..K for foreground).
    is_foreground: [S] bool; other RoIs do not reach the loss.
    mode: 'sigmoid': per-pixel BCE on the gt class channel (channel 0 if class_agnostic),
      the paper's decoupled masks; 'softmax': per-pixel cross-entropy over the K + 1
      channels, target the gt class inside the mask and 0 (background) outside, the
      paper's coupled ablation (Table 2b).
    class_agnostic: one mask channel shared by all classes (sigmoid only).

  Returns:
    Scalar float32, mean over foreground RoIs x pixels; 0 when there is no foreground.
  """
  num_pixels = mask_targets.shape[1] * mask_targets.shape[2]
  normalizer = jnp.maximum(jnp.sum(is_foreground), 1) * num_pixels
  if mode == 'sigmoid':
    channel = jnp.zeros_like(labels) if class_agnostic else labels
    logits = jnp.take_along_axis(mask_logits, channel[:, None, None, None], axis=-1)[..., 0]
    per_pixel = _binary_cross_entropy(logits, mask_targets.astype(jnp.float32))
  elif mode == 'softmax':
    if class_agnostic:
      raise ValueError('softmax mask loss needs one channel per class, not class_agnostic')
    pixel_labels = jnp.where(mask_targets > 0.5, labels[:, None, None], 0)
    per_pixel = _cross_entropy(mask_logits, pixel_labels)
  else:
    raise ValueError(f"mode must be 'sigmoid' or 'softmax'; got {mode!r}")
  return jnp.sum(jnp.where(is_foreground[:, None, None], per_pixel, 0.0)) / normalizer
