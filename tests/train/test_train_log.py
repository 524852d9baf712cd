"""The training run's console and TensorBoard: log lines above the progress bar (only on
a terminal), speeds that do not count the first step's compilation, drawn images."""

import io
import json
import logging
import re
import sys

import numpy as np

from maskrcnn_jax.train import log as train_log
from tests.train.test_train import tensorboard_images
from tests.train.test_train import _tensorboard_scalars


class _Terminal(io.StringIO):
  """A stderr that says it is a terminal."""

  def isatty(self) -> bool:
    return True


def _run_a_few_steps(workdir):
  """A run's console on the current sys.stderr (root logger at INFO): its handler."""
  handler = logging.StreamHandler(sys.stderr)
  logger = logging.getLogger()
  logger.addHandler(handler)
  old_level = logger.level
  logger.setLevel(logging.INFO)
  try:
    with train_log.TrainLog(workdir, 0, 10, batch_size=2) as log:
      log.advance(3)
      log.train_metrics(3, {'total': 1.5, 'learning_rate': 0.01})
      log.advance(1)
    logging.info('after the run')
  finally:
    logger.removeHandler(handler)
    logger.setLevel(old_level)
  return handler


def test_log_lines_print_above_the_bar(tmp_path, monkeypatch):
  terminal = _Terminal()
  monkeypatch.setattr(sys, 'stderr', terminal)
  handler = _run_a_few_steps(str(tmp_path))
  err = terminal.getvalue()
  assert 'step/s]' in err  # the bar showed
  # Each log line starts its own line: after a newline or the bar's carriage return.
  segments = re.split(r'[\r\n]', err)
  assert any(s.startswith('step 3/10: total 1.5 learning_rate 0.01 | ') for s in segments), err
  assert 'after the run' in segments
  assert handler.stream is terminal  # restored when the run ends
  assert not re.search(r'step/s\]step 3/10', err)


def test_no_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
  """stderr redirected to a file (SLURM, nohup, CI): the log lines alone, no bar."""
  assert not sys.stderr.isatty()
  handler = _run_a_few_steps(str(tmp_path))
  err = capsys.readouterr().err
  assert err.splitlines() == ['step 3/10: total 1.5 learning_rate 0.01 | images/s and ETA '
                              'after the first steps', 'after the run'], err
  assert handler.stream is sys.stderr


def test_speed_and_eta_do_not_count_the_first_step(tmp_path, monkeypatch, caplog):
  clock = [0.0]
  monkeypatch.setattr(train_log.time, 'perf_counter', lambda: clock[0])

  def steps(count, seconds_each):
    for _ in range(count):
      clock[0] += seconds_each
      log.advance()

  with caplog.at_level(logging.INFO), \
      train_log.TrainLog(str(tmp_path), 0, 1000, batch_size=2) as log:
    steps(1, 100.0)  # the first step compiles for 100 s
    log.train_metrics(1, {'total': 3.0, 'learning_rate': 0.01})
    steps(9, 0.5)
    log.train_metrics(10, {'total': 2.0, 'learning_rate': 0.01})
    steps(10, 0.25)
    log.train_metrics(20, {'total': 1.0, 'learning_rate': 0.01})
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('step ')]
  assert lines[0].endswith('| images/s and ETA after the first steps'), lines
  # 9 steps in 4.5 s after the first: 2 steps/s, 990 steps left.
  assert lines[1].endswith('| 4.0 images/s | ETA 8m15s'), lines
  assert lines[2].endswith('| 8.0 images/s | ETA 4m05s'), lines  # 4 steps/s, 980 left
  scalars = _tensorboard_scalars(tmp_path / 'tensorboard')
  assert scalars['train/images_per_second'] == [(10, 4.0), (20, 8.0)]
  assert [step for step, _ in scalars['train/total']] == [1, 10, 20]
  lines = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert lines == [{'step': 1, 'total': 3.0, 'learning_rate': 0.01},
                   {'step': 10, 'total': 2.0, 'learning_rate': 0.01, 'images_per_second': 4.0},
                   {'step': 20, 'total': 1.0, 'learning_rate': 0.01, 'images_per_second': 8.0}]


def test_resumed_run_counts_from_its_first_step(tmp_path, monkeypatch, caplog):
  clock = [0.0]
  monkeypatch.setattr(train_log.time, 'perf_counter', lambda: clock[0])
  with caplog.at_level(logging.INFO), \
      train_log.TrainLog(str(tmp_path), 500, 1000, batch_size=4) as log:
    for seconds in (60.0, 1.0, 1.0):  # steps 501 (compiling), 502, 503
      clock[0] += seconds
      log.advance()
    log.train_metrics(503, {'total': 1.0, 'learning_rate': 0.01})
  line = [r.getMessage() for r in caplog.records if r.getMessage().startswith('step ')][0]
  assert line.endswith('| 4.0 images/s | ETA 8m17s'), line  # 1 step/s, 497 left


def test_eval_images_go_to_tensorboard(tmp_path):
  rng = np.random.default_rng(0)
  drawn = {'val/7': rng.integers(0, 256, (48, 80, 3), dtype=np.uint8),
           'val/9': rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)}
  with train_log.TrainLog(str(tmp_path), 0, 10, batch_size=2) as log:
    log.eval_images(5, drawn)
  images = tensorboard_images(tmp_path / 'tensorboard')
  assert sorted(images) == ['val/7', 'val/9']
  for tag, written in images.items():
    assert [step for step, _ in written] == [5]
    np.testing.assert_array_equal(written[0][1], drawn[tag])
  with train_log.TrainLog(str(tmp_path / 'other'), 0, 10, batch_size=2, enabled=False) as log:
    log.eval_images(5, drawn)  # other processes write nothing
  assert not (tmp_path / 'other').exists()
