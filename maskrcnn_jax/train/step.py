"""The train step: one SGD step of the whole model, jitted once and sharded over the mesh.

`create_train_state` builds the model (with the op forms of the platform it is compiled
for, runtime/compiler.py), its optimizer and a fresh `TrainState`; `jit_train_step`
compiles `train_step` with the state replicated and the batch split over the 'data' axis.
"""

import functools
import logging
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.runtime import compiler
from maskrcnn_jax.runtime import distributed
from maskrcnn_jax.train import optimizer as optimizer_lib


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; checkpointed as a whole."""
  step: jax.Array  # [] int32, steps taken
  params: Any  # trained variables
  batch_stats: Any  # frozen batch norm arrays, never updated
  opt_state: Any


def init_variables(model: mask_rcnn.MaskRCNN, image_size: tuple[int, int],
                   key: jax.Array) -> dict[str, Any]:
  """Fresh {'params', 'batch_stats'} of `model` for padded [H, W] = `image_size` inputs.

  Compiled (initialising op by op takes a minute for ResNet-50 on a 2-core CPU) without
  compiler options, so that it also runs inside `jax.eval_shape`.
  """
  height, width = image_size
  init = jax.jit(model.init)
  return init(key, np.zeros((1, height, width, 3), np.uint8),
              np.array([[height, width, 1.0, 0.0, 0.0]], np.float32))


def training_model(config: ml_collections.ConfigDict, platform: str | None = None
                   ) -> mask_rcnn.MaskRCNN:
  """The model of `config` with `platform`'s RoIAlign form under differentiation
  (`compiler.roi_align_sum_in_loop`; None: the default backend's)."""
  return mask_rcnn.MaskRCNN(config.model,
                            roi_align_sum_in_loop=compiler.roi_align_sum_in_loop(platform))


def new_train_state(optimizer: optax.GradientTransformation, variables: dict[str, Any]
                    ) -> TrainState:
  """Step 0 of training from `variables` ({'params', 'batch_stats'})."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                    batch_stats=variables.get('batch_stats', {}),
                    opt_state=optimizer.init(variables['params']))


def create_train_state(config: ml_collections.ConfigDict, key: jax.Array,
                       platform: str | None = None
                       ) -> tuple[mask_rcnn.MaskRCNN, optax.GradientTransformation, TrainState]:
  """The model (`training_model(config, platform)`), its optimizer and a freshly
  initialised state for `config`."""
  model = training_model(config, platform)
  variables = init_variables(model, tuple(config.data.image_size), key)
  optimizer = optimizer_lib.make_optimizer(config.train, variables['params'],
                                           config.model.backbone.freeze_at)
  return model, optimizer, new_train_state(optimizer, variables)


def train_step(model: mask_rcnn.MaskRCNN, optimizer: optax.GradientTransformation,
               learning_rate: optax.Schedule, state: TrainState, batch: dict[str, jax.Array],
               key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a global batch; returns the new state and scalar metrics.

  The samplers' randomness is `key` folded with the step, so a resumed run and a run on
  a different number of devices draw the same samples.
  """
  step_key = jax.random.fold_in(key, state.step)

  def total_loss(params):
    terms = model.apply({'params': params, 'batch_stats': state.batch_stats}, batch,
                        step_key, method=mask_rcnn.MaskRCNN.losses)
    return terms['total'], terms

  (_, terms), grads = jax.value_and_grad(total_loss, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  metrics = dict(terms, learning_rate=learning_rate(state.step),
                 grad_norm=optax.tree.norm(grads))
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state), metrics


def jit_train_step(model: mask_rcnn.MaskRCNN, optimizer: optax.GradientTransformation,
                   train: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """`train_step` compiled once for the devices of `mesh`: state and key replicated,
  batch sharded on 'data'."""
  replicated = distributed.replicated(mesh)
  return compiler.jit(
      functools.partial(train_step, model, optimizer,
                        optimizer_lib.learning_rate_schedule(train)),
      platform=compiler.mesh_platform(mesh),
      in_shardings=(replicated, distributed.batch_sharding(mesh), replicated),
      out_shardings=(replicated, replicated), donate_argnums=0)


def init_from_checkpoint(variables: dict[str, Any], loaded: dict[str, Any], source: str
                         ) -> dict[str, Any]:
  """`variables` with every array that `loaded` holds replaced by the loaded one.

  `loaded` is a subtree of the model's variables: a converted ImageNet backbone
  ({'params': {'backbone': ...}, 'batch_stats': {'backbone': ...}}) or a whole converted
  model. An array the model does not have is an error naming it; one of another shape
  (a classifier for another number of classes) is skipped with a warning, as Detectron2
  does.
  """
  flat = flax.traverse_util.flatten_dict(variables, sep='/')
  loaded_flat = flax.traverse_util.flatten_dict(loaded, sep='/')
  unknown = sorted(k for k in loaded_flat if k not in flat)
  if unknown:
    raise KeyError(f'{source}: arrays the model does not have: {unknown[:10]}'
                   f'{" ..." if len(unknown) > 10 else ""}')
  for name, value in loaded_flat.items():
    if np.shape(value) != np.shape(flat[name]):
      logging.warning('%s: skipping %s, shape %s != the model\'s %s', source, name,
                      np.shape(value), np.shape(flat[name]))
      continue
    flat[name] = jnp.asarray(value, flat[name].dtype)
  logging.info('%s: initialised %d of %d arrays', source,
               sum(np.shape(v) == np.shape(flat[k]) for k, v in loaded_flat.items()), len(flat))
  merged = flax.traverse_util.unflatten_dict(flat, sep='/')
  # An empty collection (no batch_stats in a GroupNorm model) flattens to nothing.
  return {collection: merged.get(collection, {}) for collection in variables}
