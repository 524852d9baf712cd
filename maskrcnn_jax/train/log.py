"""What a training run reports: a progress bar, log lines, TensorBoard scalars and images,
and the logged training metrics as JSON lines (<workdir>/metrics.jsonl, like Detectron2's
metrics.json: one object per logged step; a resumed run appends, so a step logged twice
keeps its last line).

Only process 0 writes; the others keep quiet. The bar shows only when stderr is a
terminal (redirected to a file, as under SLURM, nohup or CI, the log lines are the
progress report). Speeds and ETAs count from the end of the first step, so that its
compilation does not count. TensorBoard event files go to `<workdir>/tensorboard` (view
with `tensorboard --logdir <workdir>/tensorboard`).
"""

import json
import logging
import os
import sys
import time
from typing import Mapping

import numpy as np
import tensorboardX
import tqdm


class _AboveTheBar:
  """A log handler's stream that prints each record above tqdm's bars, not across them."""

  def __init__(self, stream):
    self._stream = stream

  def write(self, text: str) -> None:
    if text.strip():
      tqdm.tqdm.write(text.rstrip('\n'), file=self._stream)

  def flush(self) -> None:
    self._stream.flush()


def _console_handlers() -> list[logging.StreamHandler]:
  """The handlers writing log records to the terminal (absl's included)."""
  handlers = []
  for handler in logging.getLogger().handlers + logging.getLogger('absl').handlers:
    handler = getattr(handler, 'python_handler', handler)  # absl's wraps a StreamHandler
    if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr,
                                                                         sys.stdout):
      handlers.append(handler)
  return handlers


def format_seconds(seconds: float) -> str:
  """'1h02m03s', '4m05s' or '6s'."""
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m{seconds:02d}s'
  return f'{minutes}m{seconds:02d}s' if minutes else f'{seconds}s'


def stderr_is_terminal() -> bool:
  """Whether stderr is a terminal, where progress bars belong."""
  isatty = getattr(sys.stderr, 'isatty', None)
  return bool(isatty and isatty())


class TrainLog:
  """Progress bar, periodic log lines, TensorBoard scalars and images of one run."""

  def __init__(self, workdir: str, start_step: int, num_steps: int, batch_size: int,
               enabled: bool = True):
    """Args:
      workdir: the run's directory; events go to <workdir>/tensorboard, logged training
        metrics to <workdir>/metrics.jsonl.
      start_step: the step the run (re)starts from.
      num_steps: the last step.
      batch_size: global images per step, for images/s.
      enabled: False on processes other than 0.
    """
    self._enabled = enabled
    self._num_steps = num_steps
    self._batch_size = batch_size
    self._done = start_step  # steps finished, as `advance` counts them
    # The step and time speeds count from: the end of the first step (None before it).
    self._last_step, self._last_time = None, None
    self._writer = None
    self._jsonl = os.path.join(workdir, 'metrics.jsonl')
    self._bar = None
    self._streams = []  # (handler, its stream) while log lines go above the bar
    if enabled:
      self._writer = tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))
      if stderr_is_terminal():
        self._bar = tqdm.tqdm(total=num_steps, initial=start_step, unit='step',
                              dynamic_ncols=True, file=sys.stderr, mininterval=1.0)
        for handler in _console_handlers():
          self._streams.append((handler, handler.setStream(_AboveTheBar(handler.stream))))

  @property
  def shows_bars(self) -> bool:
    """Whether progress bars show (process 0, stderr a terminal): evaluation's too."""
    return self._bar is not None

  def advance(self, steps: int = 1) -> None:
    """Counts `steps` more finished steps."""
    self._done += steps
    if self._last_step is None:  # the first step, with its compilation, ends now
      self._last_step, self._last_time = self._done, time.perf_counter()
      if self._bar is not None:
        self._bar.unpause()  # the bar's rate, too, from here
    if self._bar is not None:
      self._bar.update(steps)

  def train_metrics(self, step: int, metrics: Mapping[str, float],
                    skipped_images: int = 0) -> None:
    """Logs the mean `metrics` of the steps since the last call, with speed and ETA.

    Speed and ETA are those of the steps since the last call, the first step excepted
    (it compiles): a call at the first step has none yet, and says so.

    `skipped_images`: the training images found unreadable so far (data.corrupt_images),
    written as data/skipped_images and named in the line when there are any.
    """
    now = time.perf_counter()
    speed = None  # steps per second
    if self._last_step is not None and step > self._last_step:
      speed = (step - self._last_step) / max(now - self._last_time, 1e-9)
      self._last_step, self._last_time = step, now
    if not self._enabled:
      return
    for name, value in metrics.items():
      self._writer.add_scalar(f'train/{name}', value, step)
    if speed is not None:
      self._writer.add_scalar('train/images_per_second', speed * self._batch_size, step)
    self._writer.add_scalar('data/skipped_images', skipped_images, step)
    self._writer.flush()
    line = dict({'step': step}, **{k: float(v) for k, v in metrics.items()})
    if speed is not None:
      line['images_per_second'] = speed * self._batch_size
    with open(self._jsonl, 'a') as f:
      f.write(json.dumps(line) + '\n')
    if self._bar is not None:
      self._bar.set_postfix(loss=f'{metrics["total"]:.3f}',
                            lr=f'{metrics["learning_rate"]:.2g}', refresh=False)
    terms = ' '.join(f'{name} {value:.4g}' for name, value in metrics.items())
    skipped = f' | {skipped_images} unreadable images skipped' if skipped_images else ''
    if speed is None:
      logging.info('step %d/%d: %s%s | images/s and ETA after the first steps', step,
                   self._num_steps, terms, skipped)
    else:
      eta = (self._num_steps - step) / max(speed, 1e-9)
      logging.info('step %d/%d: %s | %.1f images/s%s | ETA %s', step, self._num_steps, terms,
                   speed * self._batch_size, skipped, format_seconds(eta))

  def eval_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
    """Writes evaluation scalars (e.g. 'bbox/AP') under eval/ and logs them."""
    if not self._enabled:
      return
    for name, value in metrics.items():
      self._writer.add_scalar(f'eval/{name}', value, step)
    self._writer.flush()
    logging.info('eval at step %d: %s', step,
                 ' '.join(f'{name} {value:.4f}' for name, value in metrics.items()))

  def eval_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Writes `images` (tag -> [height, width, 3] uint8 RGB), e.g. 'val/<image id>'."""
    if not self._enabled:
      return
    for tag, image in images.items():
      self._writer.add_image(tag, np.asarray(image), step, dataformats='HWC')
    self._writer.flush()

  def close(self) -> None:
    if self._enabled:
      for handler, stream in self._streams:
        handler.setStream(stream)
      self._streams = []
      if self._bar is not None:
        self._bar.close()
      self._writer.close()

  def __enter__(self) -> 'TrainLog':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
