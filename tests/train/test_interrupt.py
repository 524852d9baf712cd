"""SIGINT and SIGTERM stop training after a checkpoint of the step in flight; a rerun of
a finished run says so and evaluates; evaluations draw val images into TensorBoard.

The in-process tests run the loop on a stand-in model whose step only counts (no
Mask R-CNN to compile); the script tests run scripts/train.py on configs/tiny.py.
"""

import concurrent.futures
import logging
import os
import re
import signal
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maskrcnn_jax import checkpoint
from maskrcnn_jax.data import image_files
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import shapes
from maskrcnn_jax.evaluation import evaluator as evaluator_lib
from maskrcnn_jax.inference import visualize
from maskrcnn_jax.train import log as train_log
from maskrcnn_jax.train import loop
from maskrcnn_jax.train import step as step_lib
from tests.conftest import REPO_ROOT
from tests.train.test_train import tensorboard_images
from tests.train.test_train import tiny_config


def _counting_model(monkeypatch, nan_from=None):
  """create_train_state and jit_train_step of a model whose step adds 1 to its 3 params.

  The total loss of step s is 1 / s (NaN from step `nan_from` on).
  """
  def create_train_state(config, key, platform=None):
    optimizer = optax.sgd(0.1)
    variables = {'params': {'w': np.zeros(3, np.float32)},
                 'batch_stats': {'mean': np.zeros(1, np.float32)}}
    return None, optimizer, step_lib.new_train_state(optimizer, variables)

  def jit_train_step(model, optimizer, train, mesh):
    def train_step(state, batch, key):
      step = state.step + 1
      total = 1.0 / step.astype(jnp.float32)
      if nan_from is not None:
        total = jnp.where(step >= nan_from, jnp.nan, total)
      metrics = {'total': total, 'grad_norm': jnp.float32(1.0),
                 'learning_rate': jnp.float32(0.1)}
      return state.replace(step=step, params={'w': state.params['w'] + 1}), metrics
    return jax.jit(train_step)

  monkeypatch.setattr(step_lib, 'create_train_state', create_train_state)
  monkeypatch.setattr(step_lib, 'jit_train_step', jit_train_step)


def _config(root, num_steps, log_every=1, val=False):
  """configs/tiny.py on 8 train images (and 3 val images), a checkpoint every 50 steps."""
  config = tiny_config(str(root / 'shapes'))
  if val:
    config.data.val_annotations, config.data.val_images = shapes.write_split(
        str(root / 'shapes'), 'val', 3, 64, seed=1)
  t = config.train
  t.batch_size, t.num_steps, t.checkpoint_every, t.log_every = 2, num_steps, 50, log_every
  return config


def _signal_at_advance(monkeypatch, signal_number, count):
  """`signal_number` raised in this process at the `count`th finished step the log
  counts; returns the handlers of SIGINT and SIGTERM just after."""
  handlers = []
  advance = train_log.TrainLog.advance

  def advance_and_signal(self, steps=1):
    advance(self, steps)
    advance_and_signal.calls += 1
    if advance_and_signal.calls == count:
      signal.raise_signal(signal_number)
      handlers.extend(signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM))
  advance_and_signal.calls = 0
  monkeypatch.setattr(train_log.TrainLog, 'advance', advance_and_signal)
  return handlers


@pytest.mark.parametrize('signal_number', [signal.SIGINT, signal.SIGTERM],
                         ids=['SIGINT', 'SIGTERM'])
def test_a_signal_saves_the_step_in_flight_and_the_run_resumes_from_it(
    tmp_path, monkeypatch, signal_number):
  _counting_model(monkeypatch)
  before = [signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM)]
  # log_every = 10: the step's metrics are still on the device when the signal comes.
  handlers = _signal_at_advance(monkeypatch, signal_number, 3)
  run = tmp_path / 'run'
  with pytest.raises(loop.Interrupted) as stopped:
    loop.train_and_evaluate(_config(tmp_path, 100, log_every=10), str(run))
  # The 3rd advance is step 3's end, seen while step 4 runs: the loop stops after step 4.
  assert stopped.value.step == 4 and stopped.value.signal_number == signal_number
  assert stopped.value.exit_status == 128 + signal_number  # 130, 143
  directory = str(run / 'checkpoints')
  assert stopped.value.checkpoint_path == os.path.join(directory, '4')
  assert str(stopped.value) == (
      f'{signal.Signals(signal_number).name} stopped training at step 4; its checkpoint is '
      f'{directory}/4: run the same command again to resume')
  # After the first signal a second one acts at once; after the loop, the old handlers.
  assert handlers == [signal.SIG_DFL, signal.SIG_DFL]
  assert [signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM)] == before
  assert checkpoint.train_steps(directory) == [4]  # checkpoint_every = 50
  saved = checkpoint.train_metadata(directory, 4)  # as a regular save's
  assert saved['step'] == [1, 2, 3, 4]
  np.testing.assert_allclose(saved['total'], [1, 1 / 2, 1 / 3, 1 / 4], rtol=1e-6)
  np.testing.assert_array_equal(checkpoint.load_variables(directory)['params']['w'], [4] * 3)

  # Run again (the hook signals only once): from step 4 on.
  result = loop.train_and_evaluate(_config(tmp_path, 6, log_every=10), str(run))
  assert result['step'] == 6
  assert checkpoint.train_metadata(directory, 6)['step'] == [5, 6]
  np.testing.assert_array_equal(checkpoint.load_variables(directory)['params']['w'], [6] * 3)


def test_no_checkpoint_is_saved_at_a_signal_after_a_nan(tmp_path, monkeypatch):
  _counting_model(monkeypatch, nan_from=3)
  _signal_at_advance(monkeypatch, signal.SIGINT, 3)
  with pytest.raises(FloatingPointError, match='step 3: total became NaN or Inf'):
    loop.train_and_evaluate(_config(tmp_path, 100, log_every=10), str(tmp_path / 'run'))
  assert checkpoint.train_steps(str(tmp_path / 'run' / 'checkpoints')) == []


def test_called_from_another_thread_the_loop_leaves_the_signals_alone(tmp_path, monkeypatch):
  _counting_model(monkeypatch)
  before = [signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM)]
  results, errors = [], []

  def train():
    try:
      results.append(loop.train_and_evaluate(_config(tmp_path, 2), str(tmp_path / 'run')))
    except Exception as error:  # pylint: disable=broad-except
      errors.append(error)

  thread = threading.Thread(target=train)
  thread.start()
  thread.join()
  assert not errors, errors  # Python refuses handlers outside the main thread
  assert results[0]['step'] == 2
  assert [signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM)] == before


class _OneBoxEvaluator:
  """Stands in for evaluator_lib.Evaluator: one box on each kept image, fixed metrics."""

  calls = []

  def __init__(self, config, dataset, mesh, model=None):
    del config, mesh, model
    self._dataset = dataset
    self.kept_images = []

  def __call__(self, variables, workdir=None, progress=True, checkpoint=None, step=None,
               keep_images=0):
    _OneBoxEvaluator.calls.append(step)
    self.kept_images = [self.kept_image(r) for r in self._dataset.records[:keep_images]]
    return {'images_per_second': 1.0}

  @staticmethod
  def kept_image(record):
    return evaluator_lib.KeptImage(record.image_id, image_files.read_image(record), {
        'boxes': np.array([[8.0, 8.0, 40.0, 40.0]], np.float32),
        'scores': np.array([0.9], np.float32), 'classes': np.array([1], np.int32)})


def test_evaluations_draw_val_images_and_a_finished_run_says_it_only_evaluates(
    tmp_path, monkeypatch, caplog):
  _counting_model(monkeypatch)
  monkeypatch.setattr(evaluator_lib, 'Evaluator', _OneBoxEvaluator)
  monkeypatch.setattr(_OneBoxEvaluator, 'calls', [])
  config = _config(tmp_path, 4, val=True)
  config.train.eval_every, config.eval.tensorboard_images = 2, 2
  run = tmp_path / 'run'
  loop.train_and_evaluate(config, str(run))
  assert _OneBoxEvaluator.calls == [2, 4]
  first = pipeline.load_split(config.data, 'val').records[:2]  # of the 3 val images
  images = tensorboard_images(run / 'tensorboard')
  assert sorted(images) == sorted(f'val/{record.image_id}' for record in first)
  names = {c['id']: c['name'] for c in shapes.CATEGORIES}
  for record in first:
    drawn = images[f'val/{record.image_id}']
    assert [step for step, _ in drawn] == [2, 4]
    kept = _OneBoxEvaluator.kept_image(record)
    expected = visualize.draw_detections(kept.pixels, kept.detections, names, min_score=0.5)
    np.testing.assert_array_equal(drawn[0][1], np.asarray(expected))

  with caplog.at_level(logging.INFO):
    result = loop.train_and_evaluate(config, str(run))
  assert result['step'] == 4 and _OneBoxEvaluator.calls == [2, 4, 4]
  assert (f'{run} is already trained to step 4 (train.num_steps = 4): evaluating its final '
          'checkpoint; raise train.num_steps to train further') in caplog.messages


class _EvaluatorStoppedByCtrlC(_OneBoxEvaluator):
  """Ctrl-C reaches the evaluation's worker processes too: an idle one dies of it."""

  def __call__(self, variables, **kwargs):
    signal.raise_signal(signal.SIGINT)
    raise concurrent.futures.BrokenExecutor(
        'A process in the process pool was terminated abruptly')


def test_a_signal_that_also_ends_the_evaluation_workers_saves_and_stops(tmp_path,
                                                                        monkeypatch):
  _counting_model(monkeypatch)
  monkeypatch.setattr(evaluator_lib, 'Evaluator', _EvaluatorStoppedByCtrlC)
  config = _config(tmp_path, 100, val=True)
  config.train.eval_every = 3
  with pytest.raises(loop.Interrupted) as stopped:
    loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert (stopped.value.step, stopped.value.signal_number) == (3, signal.SIGINT)
  assert checkpoint.train_steps(str(tmp_path / 'run' / 'checkpoints')) == [3]


@pytest.mark.slow
@pytest.mark.parametrize('signal_number', [signal.SIGINT, signal.SIGTERM],
                         ids=['SIGINT', 'SIGTERM'])
def test_the_train_script_stops_on_a_signal_in_one_line_and_resumes(tmp_path, signal_number):
  annotations, images = shapes.write_split(str(tmp_path / 'shapes'), 'train', 8, 64, seed=0)
  workers = 1 if signal_number == signal.SIGINT else 0  # the workers must stop too
  command = [sys.executable, 'scripts/train.py', f'--config={REPO_ROOT / "configs" / "tiny.py"}',
             f'--workdir={tmp_path / "run"}', f'--config.data.train_annotations={annotations}',
             f'--config.data.train_images={images}', f'--config.data.num_workers={workers}',
             '--config.train.batch_size=2', '--config.train.log_every=1',
             '--config.train.checkpoint_every=1000']
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  process = subprocess.Popen(command + ['--config.train.num_steps=1000'], cwd=REPO_ROOT,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
  lines = []
  try:
    for line in process.stderr:  # until it has logged a step
      lines.append(line)
      if re.search(r'\] step \d+/1000: ', line):
        break
    assert process.poll() is None, ''.join(lines)[-3000:]
    if signal_number == signal.SIGINT:  # a terminal's Ctrl-C: the whole process group
      os.killpg(process.pid, signal_number)
    else:
      process.send_signal(signal_number)
    stderr = ''.join(lines) + process.communicate(timeout=300)[1]
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
  assert process.returncode == 128 + signal_number, stderr[-3000:]  # 130, 143
  assert 'Traceback' not in stderr, stderr[-3000:]
  name = signal.Signals(signal_number).name
  directory = str(tmp_path / 'run' / 'checkpoints')
  match = re.fullmatch(rf'train\.py: {name} stopped training at step (\d+); its checkpoint '
                       rf'is {re.escape(directory)}/(\d+): run the same command again to '
                       'resume', stderr.splitlines()[-1])
  assert match and match[1] == match[2], stderr[-3000:]
  step = int(match[1])
  assert sum('stopped training' in line for line in stderr.splitlines()) == 1
  # The only checkpoint is the signal's: checkpoint_every = 1000.
  assert checkpoint.train_steps(directory) == [step] and 0 < step < 1000
  assert checkpoint.train_metadata(directory, step)['step'] == list(range(1, step + 1))
  if signal_number == signal.SIGINT:
    # The same command with a nearer end: it resumes from the signal's checkpoint.
    result = subprocess.run(command + [f'--config.train.num_steps={step + 2}'], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'resuming from {directory}/{step}' in result.stderr
    assert checkpoint.train_steps(directory) == [step, step + 2]
    assert checkpoint.train_metadata(directory, step + 2)['step'] == [step + 1, step + 2]
