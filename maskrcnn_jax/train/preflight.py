"""Checks of a run's config and datasets that run before anything heavy starts.

Each refuses with one line naming the config key (or the file) and the fix, before the
workdir is written and before the model is built or compiled. `check_config` and
`check_datasets` guard training (`loop.train_and_evaluate`); `check_canvases`,
`check_eval_batch` and `check_writable` guard the inference scripts.
"""

import os
import tempfile

import ml_collections
import numpy as np

from maskrcnn_jax.data import structures
from maskrcnn_jax.data import transforms

# Canvas sides are multiples of the coarsest FPN level's stride (P6, 2**6): every level's
# feature map then covers the canvas exactly (transforms.canvas_sizes).
CANVAS_MULTIPLE = 64


def _round_up(value: int, multiple: int) -> int:
  return max(multiple, -(-value // multiple) * multiple)


def check_canvases(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError unless data.image_size and data.extra_canvases are valid canvases.

  Each is (height, width), sides positive multiples of `CANVAS_MULTIPLE`; the rest of
  the rules (at most 4 canvases, each inside data.image_size) are
  `transforms.canvas_sizes`'.
  """
  d = config.data
  sizes = [('data.image_size', d.image_size)] + [
      ('data.extra_canvases', size) for size in d.extra_canvases]
  for key, size in sizes:
    size = tuple(size) if isinstance(size, (tuple, list)) else (size,)
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) for v in size):
      raise ValueError(f'{key}: a canvas is (height, width), two integers; got {size} (on '
                       f'the command line: --config.{key}=HEIGHT,WIDTH)')
    if any(side <= 0 or side % CANVAS_MULTIPLE for side in size):
      fixed = tuple(_round_up(int(side), CANVAS_MULTIPLE) for side in size)
      raise ValueError(
          f'{key} = {size}: canvas sides must be positive multiples of {CANVAS_MULTIPLE} '
          f'(the stride of the coarsest FPN level, P6); use {fixed[0]},{fixed[1]} (and '
          'data.min_size / data.max_size that fit it)')
  transforms.canvas_sizes(d)


def check_eval_batch(config: ml_collections.ConfigDict, device_count: int) -> None:
  """Raises ValueError unless eval.batch_size is a positive multiple of the devices."""
  batch = config.eval.batch_size
  if batch <= 0:
    raise ValueError(f'eval.batch_size must be positive; got {batch}')
  if batch % device_count:
    raise ValueError(f'eval.batch_size = {batch} must be a multiple of the {device_count} '
                     f'devices (e.g. --config.eval.batch_size={_round_up(batch, device_count)})')


def check_config(config: ml_collections.ConfigDict, device_count: int) -> None:
  """Raises ValueError when `config` cannot train on `device_count` devices."""
  t = config.train
  batch = t.batch_size
  if batch <= 0:
    raise ValueError(f'train.batch_size must be positive; got {batch}')
  if batch % device_count:
    raise ValueError(f'train.batch_size = {batch} must be a multiple of the {device_count} '
                     f'devices (each takes an equal share of every step): e.g. '
                     f'--config.train.batch_size={_round_up(batch, device_count)}')
  for key in ('log_every', 'checkpoint_every'):
    if t[key] <= 0:
      raise ValueError(f'train.{key} must be positive (steps); got {t[key]}')
  if t.eval_every < 0:
    raise ValueError(f'train.eval_every must be 0 (only at the end) or positive; got '
                     f'{t.eval_every}')
  check_eval_batch(config, device_count)
  check_canvases(config)


def _check_images_fit(dataset: structures.CocoDataset, data_config: ml_collections.ConfigDict,
                      train: bool) -> None:
  """Every image of `dataset` gets a canvas (`transforms.choose_canvas`), per distinct size.

  Skipped for lazy records (TFDS): reading every record is the pipeline's own pass.
  """
  if not isinstance(dataset.records, list):
    return
  first = {}  # (height, width) -> its first record
  for record in dataset.records:
    first.setdefault((record.height, record.width), record)
  for (height, width), record in first.items():
    try:
      transforms.choose_canvas(height, width, data_config, train)
    except ValueError as error:
      raise ValueError(f'{dataset.annotation_file}: image id {record.image_id} '
                       f'({record.path}): {error}; raise data.image_size or lower '
                       'data.min_size / data.max_size') from error


def check_datasets(config: ml_collections.ConfigDict, train_set: structures.CocoDataset,
                   val_set: structures.CocoDataset | None) -> None:
  """Raises ValueError when the loaded splits cannot train `config`."""
  if not len(train_set):
    dropped = train_set.skipped.get('empty_images', 0)
    raise ValueError(
        f'{train_set.annotation_file}: no image to train on'
        + (f': all {dropped} images have no (non-crowd) instance and '
           'data.filter_empty_train drops them' if dropped else '')
        + '; give data.train_annotations a file whose "annotations" list has instances')
  if not int(np.sum(train_set.instance_counts)):
    raise ValueError(f'{train_set.annotation_file}: its {len(train_set)} images have no '
                     'instance to train on; give data.train_annotations a file whose '
                     '"annotations" list has instances')
  if val_set is not None and not len(val_set):
    raise ValueError(f'{val_set.annotation_file}: no image to evaluate on; give '
                     "data.val_annotations a split with images (or '' to train without "
                     'evaluation)')
  _check_images_fit(train_set, config.data, train=True)
  if val_set is not None:
    _check_images_fit(val_set, config.data, train=False)


def check_writable(directory: str, flag: str) -> None:
  """Creates `directory` if needed and raises ValueError unless a file can be written there.

  Args:
    directory: where a script will write its outputs.
    flag: the command-line flag that named it, for the message (e.g. '--workdir').
  """
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory):
      pass
  except OSError as error:
    raise ValueError(f'{flag}={directory}: cannot write there ({error.strerror or error}); '
                     'choose a folder you can write to') from error
