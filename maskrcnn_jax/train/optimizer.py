"""SGD with momentum, Detectron2's warmup + multi-step schedule, frozen backbone stages.

Frozen stages (config.model.backbone.freeze_at) get no update at all, not even weight
decay, and their gradients count in no clipping norm (Detectron2 gives them none);
normalization parameters (GroupNorm scale and bias) get train.weight_decay_norm: 0 as
Detectron2's WEIGHT_DECAY_NORM, or the weight decay of the rest as torchvision's reference
recipe. Clipping acts on the gradients before weight decay, as Detectron2's
SOLVER.CLIP_GRADIENTS does.
"""

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

# Backbone submodules frozen by freeze_at = 1, 2, ..., 5 (cumulative).
_STAGES = ('stem', 'res2', 'res3', 'res4', 'res5')
_NORM_MODULE = re.compile(r'^(bn\d+|downsample_bn)$')


def learning_rate_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
  """Detectron2's WarmupMultiStepLR with linear warmup.

  lr(step) = base_lr * warmup(step) * lr_decay ** (number of lr_steps <= step), where
  warmup rises linearly from warmup_factor at step 0 to 1 at warmup_steps.
  """
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    # No warmup at all when warmup_steps is 0 (Detectron2: factor 1 once step >= it).
    alpha = jnp.minimum(step / train.warmup_steps, 1.0) if train.warmup_steps > 0 else 1.0
    warmup = train.warmup_factor * (1.0 - alpha) + alpha
    decays = sum((step >= boundary).astype(jnp.float32) for boundary in train.lr_steps)
    return train.base_lr * warmup * train.lr_decay ** decays
  return schedule


def _path_names(path) -> tuple[str, ...]:
  return tuple(str(getattr(entry, 'key', entry)) for entry in path)


def is_frozen(names: tuple[str, ...], freeze_at: int) -> bool:
  """Whether a parameter (its path of module names in 'params') is in a frozen stage."""
  return len(names) > 1 and names[0] == 'backbone' and names[1] in _STAGES[:freeze_at]


def parameter_labels(params: Any, freeze_at: int) -> Any:
  """'frozen', 'norm' (normalization: train.weight_decay_norm) or 'decay' for each
  leaf of `params`."""
  def label(path, _):
    names = _path_names(path)
    if is_frozen(names, freeze_at):
      return 'frozen'
    return 'norm' if any(_NORM_MODULE.match(n) for n in names) else 'decay'
  return jax.tree_util.tree_map_with_path(label, params)


def clip_each_by_norm(max_norm: float) -> optax.GradientTransformation:
  """Scales each gradient array on its own to norm <= max_norm: Detectron2's CLIP_TYPE
  'norm' (torch's clip_grad_norm_ on one parameter: factor max_norm / (norm + 1e-6))."""
  def clip(updates, state, params=None):
    del params
    return jax.tree.map(
        lambda g: g * jnp.minimum(1.0, max_norm / (jnp.sqrt(jnp.sum(jnp.square(g))) + 1e-6)),
        updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), clip)


def gradient_clipping(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The gradient clipping of train.grad_clip_type at train.grad_clip_norm (0: none)."""
  kinds = {'full_model': optax.clip_by_global_norm, 'norm': clip_each_by_norm,
           'value': optax.clip}
  if train.grad_clip_type not in kinds:
    raise ValueError(f"config.train.grad_clip_type must be one of {sorted(kinds)}; "
                     f'got {train.grad_clip_type!r}')
  if train.grad_clip_norm <= 0:
    return optax.identity()
  return kinds[train.grad_clip_type](train.grad_clip_norm)


def make_optimizer(train: ml_collections.ConfigDict, params: Any,
                   freeze_at: int) -> optax.GradientTransformation:
  """The training optimizer for `params` (the 'params' collection of the model)."""
  schedule = learning_rate_schedule(train)

  def sgd(weight_decay: float) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(schedule, momentum=train.momentum))

  labels = parameter_labels(params, freeze_at)
  frozen = jax.tree.map(lambda label: label == 'frozen', labels)
  return optax.chain(
      optax.masked(optax.set_to_zero(), frozen),  # before clipping measures any norm
      gradient_clipping(train),
      optax.multi_transform(
          {'decay': sgd(train.weight_decay), 'norm': sgd(train.weight_decay_norm),
           'frozen': optax.set_to_zero()}, labels))
