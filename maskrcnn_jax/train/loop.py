"""The training loop: data, steps, checkpoints, logs, divergence checks and evaluation.

`train_and_evaluate(config, workdir)` is what scripts/train.py and scripts/demo.py run:
it resumes from the newest checkpoint in `<workdir>/checkpoints`, keeps the host one
step ahead of the devices, stops a diverging run before any non-finite checkpoint is
written, and on SIGINT (Ctrl-C) or SIGTERM (SLURM, a preempted TPU VM) saves a
checkpoint of the step in flight before it stops (`Interrupted`).
"""

import logging
import os
import signal
import threading
from typing import Any, Callable

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from maskrcnn_jax import checkpoint
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import structures
from maskrcnn_jax.evaluation import evaluator as evaluator_lib
from maskrcnn_jax.evaluation import metrics as metrics_lib
from maskrcnn_jax.inference import visualize
from maskrcnn_jax.runtime import compiler
from maskrcnn_jax.runtime import distributed
from maskrcnn_jax.train import divergence
from maskrcnn_jax.train import log as train_log
from maskrcnn_jax.train import preflight
from maskrcnn_jax.train import step as step_lib
from maskrcnn_jax.train import workdir as workdir_lib

# Ctrl-C, and what SLURM and a preempted TPU VM send before they kill a run.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The detections drawn into TensorBoard score at least this (as scripts/demo.py draws).
_DRAWN_MIN_SCORE = 0.5


class Interrupted(Exception):
  """A signal stopped training after a checkpoint of its last step was saved.

  Attributes:
    step: the last step trained, saved as `checkpoint_path`.
    checkpoint_path: `<workdir>/checkpoints/<step>`.
    signal_number: signal.SIGINT or signal.SIGTERM.
    exit_status: 128 + `signal_number` (130, 143), a shell's status for a process that
      the signal ended.
  """

  def __init__(self, step: int, checkpoint_path: str, signal_number: int):
    super().__init__(step, checkpoint_path, signal_number)
    self.step, self.checkpoint_path = step, checkpoint_path
    self.signal_number, self.exit_status = signal_number, 128 + signal_number

  def __str__(self) -> str:
    return (f'{signal.Signals(self.signal_number).name} stopped training at step '
            f'{self.step}; its checkpoint is {self.checkpoint_path}: run the same command '
            'again to resume')


class _StopSignals:
  """While entered, SIGINT and SIGTERM ask the loop to stop after the step in flight.

  The first signal is recorded in `signal_number` and restores the default action of
  both, so that a second one ends the process at once. The handlers found on entry come
  back on exit; an ignored signal (SIGINT of a background job) stays ignored. Python
  installs handlers only from the main thread: elsewhere nothing is installed.
  """

  def __init__(self):
    self.signal_number = None
    self._previous = {}

  def __enter__(self) -> '_StopSignals':
    if threading.current_thread() is threading.main_thread():
      for number in STOP_SIGNALS:
        if signal.getsignal(number) != signal.SIG_IGN:
          self._previous[number] = signal.signal(number, self._record)
    return self

  def _record(self, signal_number: int, frame: Any) -> None:
    del frame
    self.signal_number = signal_number
    for number in self._previous:
      signal.signal(number, signal.SIG_DFL)

  def __exit__(self, *exc_info) -> None:
    for number, handler in self._previous.items():
      # None: a handler not installed from Python, which Python cannot reinstall.
      signal.signal(number, signal.SIG_DFL if handler is None else handler)
    self._previous = {}

  def stop_signal(self, collective: bool) -> int | None:
    """The signal that stops the run at this step, or None.

    One process: the one received. Several: a signal may reach only some of them and a
    save is collective, so they decide together, only where `collective` (a step at
    which all of them fetch metrics): the largest signal number any has received.
    """
    if jax.process_count() == 1:
      return self.signal_number
    if not collective:
      return None
    received = multihost_utils.process_allgather(np.int32(self.signal_number or 0))
    return int(np.max(received)) or None


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


def _check_keypoints(config: ml_collections.ConfigDict, dataset: structures.CocoDataset) -> None:
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
                   ) -> tuple[structures.CocoDataset, structures.CocoDataset | None]:
  """The train split and the val split (None without one), checked against the model.

  Every check that can refuse the run happens here, before anything is compiled.
  """
  train_set = pipeline.load_split(config.data, 'train')
  coco.check_num_classes(config.model.num_classes, train_set.category_ids,
                         train_set.annotation_file)
  coco.check_masks(train_set, config.model.mask_head.enabled)
  _check_keypoints(config, train_set)
  if not (config.data.val_annotations or config.data.dataset == 'tfds'):
    return train_set, None
  val_set = pipeline.load_split(config.data, 'val')
  if val_set.category_ids != train_set.category_ids:
    raise ValueError(f'{val_set.annotation_file} has category ids {val_set.category_ids}, '
                     f'{train_set.annotation_file} has {train_set.category_ids}: '
                     'evaluation needs the categories the model is trained on')
  coco.check_evaluation_fields(val_set.annotation_file)
  coco.check_masks(val_set, config.model.mask_head.enabled)
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

  Each evaluation also draws the first `eval.tensorboard_images` val images with their
  detections into TensorBoard (`val/<image id>`). Run again after its last step, a run
  only evaluates its newest checkpoint (and logs so).

  SIGINT (Ctrl-C) or SIGTERM (SLURM, a preempted TPU VM) stops the loop after the step
  in flight: that step is saved as any checkpoint (same finiteness check, same
  metadata), then `Interrupted` is raised; scripts/train.py and scripts/demo.py print
  it as one line and exit with its `exit_status`. A second signal ends the process at
  once, unsaved. A signal during an evaluation acts when it ends. The handlers are
  installed only while the loop runs, and only from the main thread (called from
  another thread, the signals act as before). Several processes, which a signal may
  reach or not: they agree, then save and stop together, at the first step after it
  that logs (`train.log_every`) or saves.

  Returns:
    {'step': the last step, 'train': mean metrics of the last logged steps,
     'eval': evaluator_lib.Evaluator metrics of the final model (None without a val split)}.

  Raises:
    Interrupted: SIGINT or SIGTERM stopped training (a checkpoint of its step saved).
    FloatingPointError: the loss or gradient norm became NaN or Inf (nothing saved).
  """
  t = config.train
  preflight.check_config(config, jax.device_count())
  mesh = distributed.data_mesh()
  is_main = jax.process_index() == 0
  checkpoint_dir = os.path.join(workdir, 'checkpoints')
  train_set, val_set = _load_datasets(config)
  preflight.check_datasets(config, train_set, val_set)
  last_step = checkpoint.latest_train_step(checkpoint_dir)
  if last_step is not None:
    workdir_lib.check_resumed_config(workdir, config)
    if last_step >= t.num_steps:
      logging.info('%s is already trained to step %d (train.num_steps = %d): %s; raise '
                   'train.num_steps to train further', workdir, last_step, t.num_steps,
                   'nothing to evaluate without a val split' if val_set is None
                   else 'evaluating its final checkpoint')
  if is_main:
    workdir_lib.save_run_files(workdir, config, train_set.category_ids,
                               train_set.class_names, train_set.annotation_file)
  init_key, step_key = jax.random.split(jax.random.key(t.seed))
  model, optimizer, state = step_lib.create_train_state(config, init_key,
                                                         compiler.mesh_platform(mesh))
  if last_step is not None:
    state = checkpoint.restore_train_state(checkpoint_dir, last_step,
                                           distributed.replicate(state, mesh))
    logging.info('resuming from %s/%d', checkpoint_dir, last_step)
  else:
    if t.init_checkpoint:
      loaded = checkpoint.load_variables(t.init_checkpoint)
      variables = step_lib.init_from_checkpoint(
          {'params': state.params, 'batch_stats': state.batch_stats}, loaded,
          t.init_checkpoint)
      state = state.replace(params=variables['params'], batch_stats=variables['batch_stats'],
                            opt_state=optimizer.init(variables['params']))
    state = distributed.replicate(state, mesh)
  start_step = int(state.step)
  step_fn = step_lib.jit_train_step(model, optimizer, t, mesh)

  evaluator = None
  if val_set is not None:
    evaluator = evaluator_lib.Evaluator(config, val_set, mesh, model=model)
  log = train_log.TrainLog(workdir, start_step, t.num_steps, t.batch_size, enabled=is_main)

  def run_eval(step):
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    # The checkpoint of this step when one was saved; eval/metrics_by_step.json keeps
    # every evaluated step.
    saved = step in checkpoint.train_steps(checkpoint_dir)
    metrics = evaluator(variables, workdir=os.path.join(workdir, 'eval'),
                        progress=log.shows_bars,
                        checkpoint=os.path.join(checkpoint_dir, str(step)) if saved else None,
                        step=step, keep_images=config.eval.tensorboard_images)
    log.eval_metrics(step, metrics_lib.flat_metrics(metrics))
    names = dict(zip(val_set.category_ids, val_set.class_names))
    log.eval_images(step, {
        f'val/{kept.image_id}': np.asarray(visualize.draw_detections(
            kept.pixels, kept.detections, names, min_score=_DRAWN_MIN_SCORE))
        for kept in evaluator.kept_images})
    return metrics

  pending, logged, eval_metrics = [], [], None
  # Every logged step's total loss and gradient norm, those of the kept checkpoints'
  # metadata first; each save stores the steps since the previous one.
  series = _saved_series(checkpoint_dir, start_step)
  saved_upto, saved_step = len(series['step']), last_step

  def fetch_metrics(step):
    """The pending steps' metrics to the host: checked, added to `series`, logged."""
    nonlocal pending, logged
    history = jax.device_get(pending)
    log.advance()
    _check_finite(history, step - len(history), checkpoint_dir, series)
    series['step'] += range(step - len(history) + 1, step + 1)
    series['total'] += [float(h['total']) for h in history]
    series['grad_norm'] += [float(h['grad_norm']) for h in history]
    logged = history
    log.train_metrics(step, _mean_metrics(history), batches.skipped_images)
    pending = []

  def save(step):
    nonlocal saved_upto, saved_step
    checkpoint.save_train_state(checkpoint_dir, step, state, t.keep_checkpoints,
                                {k: v[saved_upto:] for k, v in series.items()})
    saved_upto, saved_step = len(series['step']), step

  def stop(step, signal_number):
    """Saves `step` as any save (after `fetch_metrics`' checks) and raises Interrupted."""
    logging.warning('%s: saving a checkpoint of step %d before stopping (a second one '
                    'stops at once, without it)', signal.Signals(signal_number).name, step)
    if pending:
      fetch_metrics(step)
    if saved_step != step:
      save(step)
    raise Interrupted(step, os.path.join(checkpoint_dir, str(step)), signal_number)

  def unless_stopped(step: int, work: Callable[..., Any], *args: Any) -> Any:
    """`work(*args)`; when it fails after a signal, the signal's stop at `step` instead.

    A signal to a whole process group (Ctrl-C; SLURM signals every process of a job)
    also reaches the data and evaluation worker processes, which may die of it.
    """
    try:
      return work(*args)
    except (Exception, KeyboardInterrupt):  # a worker's KeyboardInterrupt comes back
      if stop_signals.signal_number is None or jax.process_count() > 1:
        raise
      stop(step, stop_signals.signal_number)

  with log, _StopSignals() as stop_signals, pipeline.Batches(
      train_set, config.data, t.batch_size, train=True, seed=t.seed, start_step=start_step,
      process_index=jax.process_index(), process_count=jax.process_count()) as batches:
    for step in range(start_step + 1, t.num_steps + 1):  # `step` = steps done after this one
      batch = unless_stopped(step - 1, next, batches)
      state, metrics = step_fn(state, distributed.host_batch_to_global(batch, mesh), step_key)
      if pending:  # the host runs one step ahead of the devices, no further
        jax.block_until_ready(pending[-1]['total'])
        log.advance()
      pending.append(metrics)
      save_now = step % t.checkpoint_every == 0 or step == t.num_steps
      fetch_now = step % t.log_every == 0 or save_now  # `save_now` includes the last step
      if fetch_now:
        fetch_metrics(step)
      if save_now:
        save(step)
      signal_number = stop_signals.stop_signal(collective=fetch_now)
      if signal_number:
        stop(step, signal_number)
      if evaluator is not None and t.eval_every and step % t.eval_every == 0 \
          and step != t.num_steps:
        unless_stopped(step, run_eval, step)
    if batches.skipped_images:
      logging.warning("%d training images could not be read and were replaced by others "
                      "of their steps (data.corrupt_images = 'skip'; the warnings above name "
                      'them; scripts/check_dataset.py finds them all)', batches.skipped_images)
    last = int(state.step)
    signal_number = stop_signals.stop_signal(collective=True)
    if signal_number:  # after the last step: saved, not evaluated
      stop(last, signal_number)
    if evaluator is not None:
      eval_metrics = unless_stopped(last, run_eval, last)
  return {'step': int(state.step), 'train': _mean_metrics(logged) if logged else {},
          'eval': eval_metrics}
