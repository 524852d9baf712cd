"""Training: the train state and one jitted train step sharded over the data mesh."""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from maskrcnn_jax import optimizer as optimizer_lib
from maskrcnn_jax import parallel
from maskrcnn_jax.model import mask_rcnn


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; checkpointed as a whole."""
  step: jax.Array  # [] int32, steps taken
  params: Any  # trained variables
  batch_stats: Any  # frozen batch norm arrays, never updated
  opt_state: Any


def create_train_state(config: ml_collections.ConfigDict, key: jax.Array
                       ) -> tuple[mask_rcnn.MaskRCNN, optax.GradientTransformation, TrainState]:
  """The model, its optimizer and a freshly initialised state for `config`."""
  model = mask_rcnn.MaskRCNN(config.model)
  height, width = config.data.image_size
  variables = model.init(key, np.zeros((1, height, width, 3), np.float32),
                         np.array([[height, width, 1.0, 0.0]], np.float32))
  optimizer = optimizer_lib.make_optimizer(config.train, variables['params'],
                                           config.model.backbone.freeze_at)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                     batch_stats=variables.get('batch_stats', {}),
                     opt_state=optimizer.init(variables['params']))
  return model, optimizer, state


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
  """`train_step` compiled once: state and key replicated, batch sharded on 'data'."""
  replicated = parallel.replicated(mesh)
  return jax.jit(
      functools.partial(train_step, model, optimizer,
                        optimizer_lib.learning_rate_schedule(train)),
      in_shardings=(replicated, parallel.batch_sharding(mesh), replicated),
      out_shardings=(replicated, replicated), donate_argnums=0)
