"""Fixed-shape NumPy batches from a COCO-format split (host side; no jax).

`load_split` reads the config's train or val split; `Batches` iterates over per-host
batches of examples (`examples.prepare_example`), prepared by grain worker processes in
the order of data/loader.py's `StepPlan`. Every batch lies on one canvas; global step s
holds G examples (G = global batch), host p the slice [p * B, (p + 1) * B) of them;
batches depend only on (seed, step, host), so any step resumes in O(1) and the worker
count does not change them.

A training image that cannot be read is replaced by another image of its step
(data.corrupt_images = 'skip', counted and named once in a warning) or stops the run
('fail'); evaluation always stops.
"""

import logging
from typing import Iterator, Sequence

import ml_collections
import numpy as np

from maskrcnn_jax import image_info
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import examples
from maskrcnn_jax.data import loader
from maskrcnn_jax.data import structures
from maskrcnn_jax.data import transforms

CORRUPT_IMAGE_POLICIES = ('skip', 'fail')


# A training batch's list of (image id, error) of the images that could not be read
# there (data.corrupt_images = 'skip'); `Batches` takes it off the batch and warns.
_UNREADABLE = 'unreadable'


def load_split(data_config: ml_collections.ConfigDict, split: str) -> structures.CocoDataset:
  """The 'train' or 'val' split named by the config.

  'coco' and 'shapes' read an annotation file and an image folder; 'tfds' reads the
  split `data.tfds_<split>_split` of `data.tfds_name` (default `coco_instances`) prepared
  in `data.tfds_data_dir`.
  Training filters images without non-crowd instances when `data.filter_empty_train`,
  and with keypoints those with fewer than `data.min_train_keypoints` labelled ones;
  evaluation keeps every image.
  """
  if split not in ('train', 'val'):
    raise ValueError(f"split must be 'train' or 'val'; got {split!r}")
  min_keypoints = (data_config.min_train_keypoints
                   if split == 'train' and data_config.num_keypoints > 0 else 0)
  if data_config.dataset == 'tfds':
    # Imported here: tensorflow_datasets is heavy, and only this dataset kind needs it.
    from maskrcnn_jax.data import tfds_coco  # pylint: disable=import-outside-toplevel
    return tfds_coco.load_tfds(
        data_config.tfds_data_dir, data_config[f'tfds_{split}_split'],
        name=data_config.tfds_name or tfds_coco.NAME,
        filter_empty=split == 'train' and data_config.filter_empty_train,
        min_keypoints=min_keypoints)
  if data_config.dataset not in ('coco', 'shapes'):
    raise ValueError(f"data.dataset must be 'coco', 'shapes' or 'tfds'; got "
                     f'{data_config.dataset!r}')
  if split == 'train':
    return coco.load_coco(data_config.train_annotations, data_config.train_images,
                          filter_empty=data_config.filter_empty_train,
                          min_keypoints=min_keypoints)
  return coco.load_coco(data_config.val_annotations, data_config.val_images,
                        filter_empty=False)


class _HostBatch:
  """Global step -> this host's batch: one canvas, each example prepared onto it.

  Picklable and small (the records travel as a `loader.RecordStore` or a lazy sequence):
  it runs in the loader's worker processes. Example j of global step s is stream
  position p = s * G + offset + j; in training its flip and scale come from
  `np.random.default_rng([seed, p, 1])`, so a batch depends only on (seed, step, host).
  A training image that cannot be read (`structures.CocoFormatError`: its file or its masks)
  is replaced, with data.corrupt_images = 'skip', by the next readable record of the
  same global step (on this canvas by construction), drawn with the slot's own rng;
  the batch then carries `_UNREADABLE`.
  """

  def __init__(self, records: Sequence[structures.ImageRecord], plan: loader.StepPlan,
               canvas_sizes: Sequence[tuple[int, int]], transposed: np.ndarray,
               data_config: ml_collections.ConfigDict, global_batch_size: int,
               batch_size: int, offset: int, train: bool, seed: int, in_worker: bool):
    self._records = records
    self._plan = plan
    self._canvas_sizes = canvas_sizes  # (height, width) of each canvas index
    self._transposed = transposed  # [num_records] bool: the record lies transposed
    self._config = data_config
    self._global_batch = global_batch_size
    self._batch = batch_size
    self._offset = offset
    self._train = train
    self._seed = seed
    self._in_worker = in_worker  # runs in a worker process: batches in shared memory

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    canvas_index, indices = self._plan.step(step)
    height, width = self._canvas_sizes[canvas_index]
    batch = examples.empty_batch(self._batch, self._config, canvas_hw=(height, width))
    if self._in_worker:  # the large arrays are zeros, as a fresh shared segment is
      batch.update({key: loader.shared_zeros(value.shape, value.dtype)
                    for key, value in batch.items() if value.nbytes >= loader.SHARED_MIN_BYTES})
    unreadable = []
    for slot in range(self._batch):
      index = int(indices[self._offset + slot])
      if index == loader.PADDING_INDEX:
        continue
      position = step * self._global_batch + self._offset + slot
      try:
        example = self._example(index, canvas_index, position)
      except structures.CocoFormatError as e:
        if not (self._train and self._config.corrupt_images == 'skip'):
          raise
        record = self._records[index]
        unreadable.append((record.image_id, _read_error(record, e)))
        example = self._replacement(step, indices, self._offset + slot, canvas_index,
                                    position, e)
      # Only the valid region and instances: the rest is zeros in both, and pages of a
      # fresh shared segment that are never written cost nothing.
      valid_h, valid_w = (int(v) for v in image_info.resized_hw(example['image_info']))
      num = int(np.count_nonzero(example['gt_classes']))
      batch['images'][slot, :valid_h, :valid_w] = example['images'][:valid_h, :valid_w]
      batch['gt_masks'][slot, :num] = example['gt_masks'][:num]
      for key, value in example.items():
        if key not in ('images', 'gt_masks'):
          batch[key][slot] = value
    if self._train:
      batch[_UNREADABLE] = unreadable
    return batch

  def _example(self, index: int, canvas_index: int, position: int) -> dict[str, np.ndarray]:
    """Record `index` prepared onto canvas `canvas_index` as stream position `position`."""
    height, width = self._canvas_sizes[canvas_index]
    canvas = transforms.Canvas(canvas_index, height, width, bool(self._transposed[index]))
    rng = np.random.default_rng([self._seed, position, 1]) if self._train else None
    return examples.prepare_example(self._records[index], self._config, canvas, rng)

  def _replacement(self, step: int, indices: np.ndarray, column: int, canvas_index: int,
                   position: int, error: Exception) -> dict[str, np.ndarray]:
    """The first readable record of the step after column `column` (cyclically).

    A replacement, not an empty slot: the losses have no per-image validity, and an
    empty image would still train its anchors and RoIs as background. It depends only
    on the step and the files, so resumption and the worker count do not change it.
    """
    for shift in range(1, len(indices)):
      index = int(indices[(column + shift) % len(indices)])
      try:
        return self._example(index, canvas_index, position)
      except structures.CocoFormatError:
        continue
    raise structures.CocoFormatError(f'{error} (no image of step {step} could be read in its '
                                     'place)') from error


def _read_error(record: structures.ImageRecord, error: Exception) -> str:
  """The error naming the record's file and image id (a mask's error names neither)."""
  if isinstance(error, structures.ImageReadError):
    return str(error)
  return f'{error} (image id {record.image_id}, {record.path})'


def _record_canvases(dataset: structures.CocoDataset, data_config: ml_collections.ConfigDict,
                     train: bool) -> tuple[np.ndarray, np.ndarray]:
  """[num_records] int canvas index and [num_records] bool transposed of each record.

  `transforms.choose_canvas` once per distinct original size (COCO has a few thousand).
  """
  sizes = np.array([(r.height, r.width) for r in dataset.records], np.int64).reshape(-1, 2)
  distinct, inverse = np.unique(sizes, axis=0, return_inverse=True)
  canvases = []
  for i, (height, width) in enumerate(distinct):
    try:
      canvases.append(transforms.choose_canvas(int(height), int(width), data_config, train))
    except ValueError as e:
      record = dataset.records[int(np.flatnonzero(inverse.ravel() == i)[0])]
      raise ValueError(f'{record.source}: image id {record.image_id} ({record.path}): {e}'
                       ) from e
  inverse = inverse.ravel()
  return (np.array([c.index for c in canvases], np.int64)[inverse],
          np.array([c.transpose for c in canvases], bool)[inverse])


class Batches:
  """Iterator of per-host batches (dicts of NumPy arrays, the batch table's keys).

  Every batch lies on one canvas (its images' shape), the same on every host at a step;
  the order is `loader.StepPlan`'s, so batches depend only on (seed, step, host) and
  not on the number of workers. `data.num_workers` grain processes (0: the calling
  process) prepare them, `data.prefetch` batches ahead of the consumer. Use as a context
  manager, or call `close()`, to stop the workers. A worker's error is raised by
  `__next__` (a bad image or annotation names its file and image id); a worker that dies
  raises a RuntimeError within about a second. In training, data.corrupt_images = 'skip'
  replaces an image that cannot be read instead (`_HostBatch`): a warning names it the
  first time and `skipped_images` counts them.
  """

  def __init__(self, dataset: structures.CocoDataset, data_config: ml_collections.ConfigDict,
               global_batch_size: int, *, train: bool, seed: int = 0, start_step: int = 0,
               process_index: int = 0, process_count: int = 1):
    """Starts the workers on the first steps.

    Args:
      dataset: the split to read.
      data_config: `config.data`.
      global_batch_size: examples per step over all hosts; divisible by process_count.
      train: shuffle, augment (flip, scale) and repeat forever; else one pass, grouped
        by canvas, each canvas's last batch padded with padding examples (image_id -1).
      seed: order and augmentation seed (training).
      start_step: first global step to produce (resumption).
      process_index: this host, 0..process_count - 1 (`jax.process_index()`).
      process_count: number of hosts (`jax.process_count()`).
    """
    if global_batch_size % process_count:
      raise ValueError(f'global batch {global_batch_size} is not divisible by '
                       f'{process_count} hosts')
    if data_config.corrupt_images not in CORRUPT_IMAGE_POLICIES:
      raise ValueError(f'data.corrupt_images must be one of {CORRUPT_IMAGE_POLICIES}; got '
                       f'{data_config.corrupt_images!r}')
    if not len(dataset):
      raise ValueError(f'{dataset.annotation_file}: no images to read')
    truncated = int(np.sum(dataset.instance_counts > data_config.max_instances))
    logging.log(logging.WARNING if truncated else logging.INFO,
                '%s: %d of %d images have more than data.max_instances = %d instances and '
                'keep only the first %d', dataset.annotation_file, truncated, len(dataset),
                data_config.max_instances, data_config.max_instances)
    canvas_sizes = transforms.canvas_sizes(data_config)  # config errors before image errors
    record_canvas, transposed = _record_canvases(dataset, data_config, train)
    plan = loader.StepPlan(record_canvas, canvas_sizes, global_batch_size, train=train,
                           seed=seed)
    self.num_steps = plan.num_steps
    self._unreadable_ids = set()  # image ids of the training images replaced
    self._next_step = start_step
    workers = data_config.num_workers
    # A list would be pickled whole to each worker; the store sends a file name. Lazy
    # records (TFDS) already travel as a reader.
    self._store = loader.RecordStore(dataset.records) if workers and isinstance(
        dataset.records, list) else None
    records = dataset.records if self._store is None else self._store
    batch = global_batch_size // process_count
    make_batch = _HostBatch(records, plan, canvas_sizes, transposed, data_config,
                            global_batch_size, batch, process_index * batch, train, seed,
                            in_worker=workers > 0)
    self._iterator = loader.iterate(make_batch, start_step, self.num_steps, workers,
                                    data_config.prefetch)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    step, self._next_step = self._next_step, self._next_step + 1
    for image_id, error in batch.pop(_UNREADABLE, ()):
      if image_id not in self._unreadable_ids:  # once per image; it is replaced each time
        self._unreadable_ids.add(image_id)
        logging.warning("%s; replaced at step %d by another image of the step "
                        "(data.corrupt_images = 'skip'; 'fail' stops instead); %d "
                        'unreadable training images so far', error, step,
                        self.skipped_images)
    return {key: np.asarray(value) for key, value in batch.items()}  # plain views of shm

  @property
  def skipped_images(self) -> int:
    """How many distinct training images could not be read so far (data.corrupt_images)."""
    return len(self._unreadable_ids)

  def close(self) -> None:
    self._iterator.close()
    if self._store is not None:
      self._store.close()

  def __enter__(self) -> 'Batches':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
