"""The training run's console: log lines above the progress bar, never glued to it."""

import logging
import re
import sys

from maskrcnn_jax.train import log as train_log


def test_log_lines_print_above_the_bar(tmp_path, capsys):
  handler = logging.StreamHandler(sys.stderr)
  logger = logging.getLogger()
  logger.addHandler(handler)
  old_level = logger.level
  logger.setLevel(logging.INFO)
  try:
    with train_log.TrainLog(str(tmp_path), 0, 10, batch_size=2) as log:
      log.advance(3)
      log.train_metrics(3, {'total': 1.5, 'learning_rate': 0.01})
      log.advance(1)
    logging.info('after the run')
  finally:
    logger.removeHandler(handler)
    logger.setLevel(old_level)
  err = capsys.readouterr().err
  # Each log line starts its own line: after a newline or the bar's carriage return.
  segments = re.split(r'[\r\n]', err)
  assert any(s.startswith('step 3/10: total 1.5 learning_rate 0.01 | ') for s in segments), err
  assert 'after the run' in segments
  assert handler.stream is sys.stderr  # restored when the run ends
  assert not re.search(r'step/s\]step 3/10', err)
