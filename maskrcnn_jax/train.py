"""Training: the train state, one jitted train step sharded over the data mesh, the loop."""

import functools
import logging
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from maskrcnn_jax import checkpoint
from maskrcnn_jax import divergence
from maskrcnn_jax import evaluate
from maskrcnn_jax import optimizer as optimizer_lib
from maskrcnn_jax import parallel
from maskrcnn_jax import train_log
from maskrcnn_jax import workdir as workdir_lib
from maskrcnn_jax import xla_options
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.model import mask_rcnn


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

  Compiled: initialising op by op takes a minute for ResNet-50 on a 2-core CPU.
  """
  height, width = image_size
  init = xla_options.jit(model.init)
  return init(key, np.zeros((1, height, width, 3), np.uint8),
              np.array([[height, width, 1.0, 0.0, 0.0]], np.float32))


def create_train_state(config: ml_collections.ConfigDict, key: jax.Array
                       ) -> tuple[mask_rcnn.MaskRCNN, optax.GradientTransformation, TrainState]:
  """The model, its optimizer and a freshly initialised state for `config`.

  The model takes this backend's RoIAlign form (`xla_options.roi_align_sum_in_loop`).
  """
  model = mask_rcnn.MaskRCNN(config.model,
                             roi_align_sum_in_loop=xla_options.roi_align_sum_in_loop())
  variables = init_variables(model, tuple(config.data.image_size), key)
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
  return xla_options.jit(
      functools.partial(train_step, model, optimizer,
                        optimizer_lib.learning_rate_schedule(train)),
      in_shardings=(replicated, parallel.batch_sharding(mesh), replicated),
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
  return flax.traverse_util.unflatten_dict(flat, sep='/')


def _check_finite(history: list[dict[str, np.ndarray]], first_step: int,
                  checkpoint_dir: str, series: dict[str, list]) -> None:
  """Raises FloatingPointError when a loss or gradient norm of `history` is NaN or Inf.

  Checked before every save: a finite loss and gradient norm at a step mean finite
  parameters after it, so no saved checkpoint holds NaN. The message names where the
  divergence began (`divergence.divergence_onset` over `series`, the steps logged
  before `history`, and `history`) and the last checkpoint saved before it.
  """
  for offset, values in enumerate(history):
    bad = sorted(k for k in ('total', 'rpn_cls', 'rpn_box', 'cls', 'box', 'mask', 'keypoint',
                             'grad_norm')
                 if k in values and not np.isfinite(values[k]))
    if not bad:
      continue
    step = first_step + offset + 1
    steps = series['step'] + list(range(first_step + 1, step + 1))
    totals = series['total'] + [float(h['total']) for h in history[:offset + 1]]
    norms = series['grad_norm'] + [float(h['grad_norm']) for h in history[:offset + 1]]
    onset = divergence.divergence_onset(steps, totals, norms)
    began = ('with no spike before it' if onset == step else
             f'after a spike at step {onset} (total loss {totals[steps.index(onset)]:.4g}, '
             f'gradient norm {norms[steps.index(onset)]:.4g})')
    kept = checkpoint.train_steps(checkpoint_dir)
    good = divergence.last_good_checkpoint(onset, kept)
    later = [k for k in kept if good is None or k > good]
    if good is None:
      advice = (f'No kept checkpoint in {checkpoint_dir} predates it (kept: steps {kept}): '
                'start again with a lower train.base_lr or more train.warmup_steps')
    else:
      advice = (f'The last good checkpoint is {checkpoint_dir}/{good}'
                + (f' (remove the later steps {later} to resume from it)' if later else '')
                + ': lower train.base_lr or raise train.warmup_steps and resume')
    raise FloatingPointError(
        f'step {step}: {", ".join(bad)} became NaN or Inf (total loss {values["total"]}) '
        f'{began}; stopping. {advice}.')


def _saved_series(checkpoint_dir: str, upto: int) -> dict[str, list]:
  """{'step', 'total', 'grad_norm'} lists of the kept checkpoints' metadata, to `upto`."""
  series = {'step': [], 'total': [], 'grad_norm': []}
  for step in checkpoint.train_steps(checkpoint_dir):
    saved = checkpoint.train_metadata(checkpoint_dir, step)
    for i, saved_step in enumerate(saved.get('step', [])):
      if saved_step <= upto and (not series['step'] or saved_step > series['step'][-1]):
        for key in series:
          series[key].append(saved[key][i])
  return series


def _mean_metrics(history: list[dict[str, np.ndarray]]) -> dict[str, float]:
  return {k: float(np.mean([h[k] for h in history])) for k in history[0]}


def _check_keypoints(config: ml_collections.ConfigDict, dataset: coco.CocoDataset) -> None:
  """The keypoint head, the batches and the dataset agree on K (or the head is off)."""
  head = config.model.keypoint_head
  if not head.enabled:
    return
  found = len(dataset.keypoint_names)
  if not head.num_keypoints == config.data.num_keypoints == found:
    raise ValueError(
        f'config.model.keypoint_head.num_keypoints = {head.num_keypoints} and '
        f'config.data.num_keypoints = {config.data.num_keypoints} must both equal the '
        f'{found} keypoints declared by {dataset.annotation_file}')


def _load_datasets(config: ml_collections.ConfigDict
                   ) -> tuple[coco.CocoDataset, coco.CocoDataset | None]:
  """The train split and the val split (None without one), checked against the model.

  Every check that can refuse the run happens here, before anything is compiled.
  """
  train_set = pipeline.load_split(config.data, 'train')
  coco.check_num_classes(config.model.num_classes, train_set.category_ids,
                         train_set.annotation_file)
  _check_keypoints(config, train_set)
  if not (config.data.val_annotations or config.data.dataset == 'tfds'):
    return train_set, None
  val_set = pipeline.load_split(config.data, 'val')
  if val_set.category_ids != train_set.category_ids:
    raise ValueError(f'{val_set.annotation_file} has category ids {val_set.category_ids}, '
                     f'{train_set.annotation_file} has {train_set.category_ids}: '
                     'evaluation needs the categories the model is trained on')
  coco.check_evaluation_fields(val_set.annotation_file)
  return train_set, val_set


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its newest checkpoint; returns final metrics.

  Writes `<workdir>/checkpoints/<step>` every `train.checkpoint_every` steps and at the
  end (the newest `train.keep_checkpoints` kept), TensorBoard scalars in
  `<workdir>/tensorboard`, and evaluates on the val split every `train.eval_every` steps
  and at the end into `<workdir>/eval`; `workdir_lib.save_run_files` keeps the config and
  the categories beside them. A resumed run must keep the saved config
  (`workdir_lib.RESUMABLE_KEYS` excepted) and continues exactly where the
  checkpoint left off: the state holds the step, which fixes the samplers' key
  (`train_step`) and the data position (`Batches(start_step=...)`).

  Returns:
    {'step': the last step, 'train': mean metrics of the last logged steps,
     'eval': evaluate.Evaluator metrics of the final model (None without a val split)}.
  """
  t = config.train
  mesh = parallel.data_mesh()
  is_main = jax.process_index() == 0
  checkpoint_dir = os.path.join(workdir, 'checkpoints')
  train_set, val_set = _load_datasets(config)
  last_step = checkpoint.latest_train_step(checkpoint_dir)
  if last_step is not None:
    workdir_lib.check_resumed_config(workdir, config)
  if is_main:
    workdir_lib.save_run_files(workdir, config, train_set.category_ids,
                               train_set.class_names, train_set.annotation_file)
  init_key, step_key = jax.random.split(jax.random.key(t.seed))
  model, optimizer, state = create_train_state(config, init_key)
  if last_step is not None:
    state = checkpoint.restore_train_state(checkpoint_dir, last_step,
                                           parallel.replicate(state, mesh))
    logging.info('resuming from %s/%d', checkpoint_dir, last_step)
  else:
    if t.init_checkpoint:
      loaded = checkpoint.load_variables(t.init_checkpoint)
      variables = init_from_checkpoint(
          {'params': state.params, 'batch_stats': state.batch_stats}, loaded,
          t.init_checkpoint)
      state = state.replace(params=variables['params'], batch_stats=variables['batch_stats'],
                            opt_state=optimizer.init(variables['params']))
    state = parallel.replicate(state, mesh)
  start_step = int(state.step)
  step_fn = jit_train_step(model, optimizer, t, mesh)

  evaluator = None
  if val_set is not None:
    evaluator = evaluate.Evaluator(config, val_set, mesh, model=model)
  log = train_log.TrainLog(workdir, start_step, t.num_steps, t.batch_size, enabled=is_main)

  def run_eval(step):
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    # The checkpoint of this step when one was saved; eval/metrics_by_step.json keeps
    # every evaluated step.
    saved = step in checkpoint.train_steps(checkpoint_dir)
    metrics = evaluator(variables, workdir=os.path.join(workdir, 'eval'), progress=is_main,
                        checkpoint=os.path.join(checkpoint_dir, str(step)) if saved else None,
                        step=step)
    log.eval_metrics(step, evaluate.flat_metrics(metrics))
    return metrics

  pending, logged, eval_metrics = [], [], None
  # Every logged step's total loss and gradient norm, those of the kept checkpoints'
  # metadata first; each save stores the steps since the previous one.
  series = _saved_series(checkpoint_dir, start_step)
  saved_upto = len(series['step'])
  with log, pipeline.Batches(train_set, config.data, t.batch_size, train=True, seed=t.seed,
                        start_step=start_step, process_index=jax.process_index(),
                        process_count=jax.process_count()) as batches:
    for step in range(start_step + 1, t.num_steps + 1):  # `step` = steps done after this one
      state, metrics = step_fn(state, parallel.host_batch_to_global(next(batches), mesh),
                               step_key)
      if pending:  # the host runs one step ahead of the devices, no further
        jax.block_until_ready(pending[-1]['total'])
        log.advance()
      pending.append(metrics)
      save = step % t.checkpoint_every == 0 or step == t.num_steps
      if step % t.log_every == 0 or save:  # `save` includes the last step
        history = jax.device_get(pending)
        log.advance()
        _check_finite(history, step - len(history), checkpoint_dir, series)
        series['step'] += range(step - len(history) + 1, step + 1)
        series['total'] += [float(h['total']) for h in history]
        series['grad_norm'] += [float(h['grad_norm']) for h in history]
        logged = history
        log.train_metrics(step, _mean_metrics(history), batches.skipped_images)
        pending = []
      if save:
        checkpoint.save_train_state(checkpoint_dir, step, state, t.keep_checkpoints,
                                    {k: v[saved_upto:] for k, v in series.items()})
        saved_upto = len(series['step'])
      if evaluator is not None and t.eval_every and step % t.eval_every == 0 \
          and step != t.num_steps:
        run_eval(step)
    if batches.skipped_images:
      logging.warning("%d training images could not be read and were replaced by others "
                      "of their steps (data.corrupt_images = 'skip'; the warnings above name "
                      'them; scripts/check_dataset.py finds them all)', batches.skipped_images)
    if evaluator is not None:
      eval_metrics = run_eval(int(state.step))
  return {'step': int(state.step), 'train': _mean_metrics(logged) if logged else {},
          'eval': eval_metrics}
