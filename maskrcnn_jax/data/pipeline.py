"""Fixed-shape NumPy batches from a COCO-format dataset (host side; no jax).

One example (`prepare_example`): read and decode the image; resize it with
`data.resize_backend` (training: the scale augmentation or large-scale jitter of
data/augment.py; else the test resize `data.resize_mode`); maybe flip it, crop it (LSJ)
and transpose it (a portrait on a landscape canvas, `transforms.choose_canvas`); pad it
with zeros onto its canvas as raw RGB, uint8 (float32 with data.resize_backend =
'torch'; the model normalizes on the device). Keep the first `data.max_instances`
instances (boxes in the canvas frame, each gt mask cropped from the ORIGINAL-image mask
over its original box, or over the part of it a crop keeps, to `data.mask_size`, then
flipped and transposed with the image; instances a crop leaves empty are dropped) and
pad the rest. Keys, shapes and dtypes are DESIGN.md's batch table (B = per-host batch,
H x W = the batch's canvas, N = max_instances, S = mask_size):
  images [B, H, W, 3] uint8 (or float32), image_info [B, 5] float32
  (maskrcnn_jax/image_info.py: resized h, resized w, scale, flipped, transposed),
  gt_boxes [B, N, 4] float32, gt_classes [B, N] int32, gt_masks [B, N, S, S] uint8,
  gt_is_crowd [B, N] bool, image_id [B] int64; with data.num_keypoints = K > 0 also
  gt_keypoints [B, N, K, 3] float32 (x, y continuous canvas pixels, visibility; zeros
  where unlabelled or padded).

A training image that cannot be read is replaced by another image of its step
(data.corrupt_images = 'skip', counted and named once in a warning) or stops the run
('fail'); evaluation always stops.

Order and workers: `Batches` (data/loader.py's `StepPlan` and grain worker processes).
Every batch lies on one canvas; global step s holds G examples (G = global batch), host p
the slice [p * B, (p + 1) * B) of them; batches depend only on (seed, step, host), so any
step resumes in O(1) and the worker count does not change them.
"""

import logging
import time
from typing import Iterator, Sequence

import ml_collections
import numpy as np

from maskrcnn_jax import image_info
from maskrcnn_jax.data import augment
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import loader
from maskrcnn_jax.data import transforms
from maskrcnn_jax.ops import keypoints as keypoint_ops
from maskrcnn_jax.ops import rle_crops

PADDING_IMAGE_ID = -1
CORRUPT_IMAGE_POLICIES = ('skip', 'fail')
# A training batch's list of (image id, error) of the images that could not be read
# there (data.corrupt_images = 'skip'); `Batches` takes it off the batch and warns.
_UNREADABLE = 'unreadable'


def load_split(data_config: ml_collections.ConfigDict, split: str) -> coco.CocoDataset:
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


def empty_batch(batch_size: int, data_config: ml_collections.ConfigDict,
                canvas_hw: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
  """A batch of padding examples (zeros, image_id -1), with the batch table's shapes.

  Args:
    batch_size: B.
    data_config: `config.data`.
    canvas_hw: (H, W) of the images; None: data.image_size (the main canvas).
  """
  height, width = data_config.image_size if canvas_hw is None else canvas_hw
  n, s = data_config.max_instances, data_config.mask_size
  return {
      'images': np.zeros((batch_size, height, width, 3), transforms.image_dtype(data_config)),
      'image_info': np.zeros((batch_size, image_info.SIZE), np.float32),
      'gt_boxes': np.zeros((batch_size, n, 4), np.float32),
      'gt_classes': np.zeros((batch_size, n), np.int32),
      'gt_masks': np.zeros((batch_size, n, s, s), np.uint8),
      'gt_is_crowd': np.zeros((batch_size, n), bool),
      'image_id': np.full((batch_size,), PADDING_IMAGE_ID, np.int64),
      **({'gt_keypoints': np.zeros((batch_size, n, data_config.num_keypoints, 3), np.float32)}
         if data_config.num_keypoints else {}),
  }


def _slot_views(batch: dict[str, np.ndarray], slot: int) -> dict[str, np.ndarray]:
  """Writable views of one slot of a batch (image_id a 0-d array, not a copied scalar)."""
  return {key: value[slot:slot + 1].reshape(value.shape[1:]) for key, value in batch.items()}


class _StageTimer:
  """Adds the seconds since the previous lap to `seconds[stage]` (a no-op without a dict)."""

  def __init__(self, seconds: dict | None):
    self._seconds = seconds
    self._last = time.perf_counter() if seconds is not None else 0.0

  def lap(self, stage: str) -> None:
    if self._seconds is not None:
      now = time.perf_counter()
      self._seconds[stage] = self._seconds.get(stage, 0.0) + now - self._last
      self._last = now


def _write_example(out: dict[str, np.ndarray], record: coco.ImageRecord,
                   data_config: ml_collections.ConfigDict, canvas: transforms.Canvas,
                   geometry: augment.Geometry, stage_seconds: dict | None) -> None:
  """Writes one record, mapped by `geometry` onto `canvas`, into zeroed per-example arrays.

  `out` holds the batch table's keys without the batch dim (views into a batch or not).
  """
  cfg, g = data_config, geometry
  timer = _StageTimer(stage_seconds)
  # The window must fit the canvas in the image's own orientation.
  fit_h, fit_w = (canvas.width, canvas.height) if canvas.transpose else (canvas.height,
                                                                          canvas.width)
  if g.crop_height > fit_h or g.crop_width > fit_w:
    raise ValueError(
        f'{record.path} (image id {record.image_id}) resizes to {g.crop_height} x '
        f'{g.crop_width}{" (transposed)" if canvas.transpose else ""}, larger than its '
        f'canvas {canvas.height} x {canvas.width} (data.image_size / data.extra_canvases)')
  pixels = coco.read_image(record)
  timer.lap('decode')

  pixels = transforms.resize_pixels(pixels, g.new_height, g.new_width, cfg)
  if g.flip:
    pixels = transforms.flip_image(pixels)
  pixels = pixels[g.crop_y:g.crop_y + g.crop_height, g.crop_x:g.crop_x + g.crop_width]
  if canvas.transpose:
    pixels = transforms.transpose_image(pixels)
  timer.lap('resize')
  out['images'][:pixels.shape[0], :pixels.shape[1]] = pixels
  out['image_info'][:] = image_info.make(pixels.shape[0], pixels.shape[1], g.scale, g.flip,
                                         canvas.transpose)
  out['image_id'][...] = record.image_id
  timer.lap('pad')

  boxes = transforms.resize_boxes(record.boxes, record.height, record.width, g.new_height,
                                  g.new_width)
  if g.flip:
    boxes = transforms.flip_boxes(boxes, g.new_width)
  clipped = np.zeros(len(boxes), bool)
  kept = np.arange(record.num_instances)
  if g.cropped:
    boxes, keep, clipped = augment.crop_boxes(boxes, g)
    kept = np.flatnonzero(keep)  # crowd flags and classes move with their instances
  kept = kept[:cfg.max_instances]
  n = len(kept)
  # A clipped box crops the original mask over the part of it that stays in the window.
  source_boxes = np.array([
      augment.window_box_to_original(boxes[i], record.height, record.width, g)
      if clipped[i] else record.boxes[i] for i in kept], np.float64).reshape(n, 4)
  crops = rle_crops.crop_and_resize_rles([coco.instance_rle(record, i) for i in kept],
                                         source_boxes, cfg.mask_size)
  if g.flip:
    crops = crops[:, :, ::-1]
  out['gt_masks'][:n] = crops.transpose(0, 2, 1) if canvas.transpose else crops
  boxes = boxes[kept]
  out['gt_boxes'][:n] = transforms.transpose_boxes(boxes) if canvas.transpose else boxes
  out['gt_classes'][:n] = record.classes[kept]
  out['gt_is_crowd'][:n] = record.is_crowd[kept]
  if cfg.num_keypoints:
    out['gt_keypoints'][:n] = _example_keypoints(record, kept, cfg.num_keypoints, g, canvas)
  timer.lap('masks')


def _example_keypoints(record: coco.ImageRecord, kept: np.ndarray, num_keypoints: int,
                       geometry: augment.Geometry, canvas: transforms.Canvas) -> np.ndarray:
  """[n, K, 3] keypoints of the kept instances, mapped by `geometry` onto `canvas`.

  COCO's integer pixel indices become continuous coordinates (+ 0.5, Detectron2's
  convention), scale with the image, mirror with their left/right swap, shift with the
  crop (leaving the window makes them unlabelled) and transpose with the canvas.
  Unlabelled keypoints (v = 0) are zeros.
  """
  g = geometry
  if record.keypoints is None or record.keypoints.shape[1] != num_keypoints:
    found = 0 if record.keypoints is None else record.keypoints.shape[1]
    raise ValueError(f'{record.source}: image id {record.image_id}: {found} keypoints per '
                     f'instance, data.num_keypoints is {num_keypoints}')
  keypoints = record.keypoints[kept].copy()
  labelled = keypoints[..., 2] > 0
  keypoints[..., 0] = (keypoints[..., 0] + 0.5) * (g.new_width / record.width)
  keypoints[..., 1] = (keypoints[..., 1] + 0.5) * (g.new_height / record.height)
  keypoints[..., :2] *= labelled[..., None]
  if g.flip:
    keypoints = keypoint_ops.flip_keypoints(
        keypoints, g.new_width, keypoint_ops.flip_indices(record.keypoint_names))
  if g.cropped:
    keypoints[..., :2] -= np.array([g.crop_x, g.crop_y], np.float32)
    inside = ((keypoints[..., 0] >= 0) & (keypoints[..., 1] >= 0)
              & (keypoints[..., 0] <= g.crop_width) & (keypoints[..., 1] <= g.crop_height))
    keypoints *= (inside & (keypoints[..., 2] > 0))[..., None]
  if canvas.transpose:
    keypoints = keypoints[..., [1, 0, 2]]
  return keypoints


def prepare_example(record: coco.ImageRecord, data_config: ml_collections.ConfigDict,
                    canvas: transforms.Canvas, rng: np.random.Generator | None,
                    stage_seconds: dict | None = None) -> dict[str, np.ndarray]:
  """One example (the module docstring) on `canvas`: the batch table's keys, no batch dim.

  Args:
    record: the image and its instances.
    data_config: `config.data`.
    canvas: `transforms.choose_canvas(record.height, record.width, data_config, train)`.
    rng: None for evaluation (test resize, no flip); else flip (data.random_flip) and the
      scale augmentation or large-scale jitter are drawn from it (data/augment.py).
    stage_seconds: when given, seconds per stage ('decode', 'resize', 'pad', 'masks') are
      added to it.

  Returns:
    images [H, W, 3] uint8 or float32 (H, W = the canvas), image_info [5] float32,
    gt_boxes [N, 4] float32, gt_classes [N] int32, gt_masks [N, S, S] uint8,
    gt_is_crowd [N] bool, image_id [] int64.
  """
  out = _slot_views(empty_batch(1, data_config, (canvas.height, canvas.width)), 0)
  geometry = augment.draw_geometry(record.height, record.width, data_config, canvas, rng)
  _write_example(out, record, data_config, canvas, geometry, stage_seconds)
  return out


def fill_example(batch: dict[str, np.ndarray], slot: int, record: coco.ImageRecord,
                 data_config: ml_collections.ConfigDict, flip: bool = False) -> None:
  """Prepares one record at the test resize, maybe flipped, into slot `slot` of a batch.

  The batch's canvas is its images' shape, one of the config's canvases (`empty_batch`'s
  default, the main one, holds every image); the record is transposed onto it as
  `choose_canvas` says. No scale augmentation: training draws it in `prepare_example`.
  """
  size = tuple(batch['images'].shape[1:3])
  sizes = transforms.canvas_sizes(data_config)
  if size not in sizes:
    raise ValueError(f'batch images of {size[0]} x {size[1]} are on none of the canvases '
                     f'{sizes} (data.image_size / data.extra_canvases)')
  transpose = transforms.choose_canvas(record.height, record.width, data_config,
                                       train=False).transpose
  canvas = transforms.Canvas(sizes.index(size), *size, transpose)
  geometry = augment.eval_geometry(record.height, record.width, data_config, flip)
  _write_example(_slot_views(batch, slot), record, data_config, canvas, geometry, None)


class _HostBatch:
  """Global step -> this host's batch: one canvas, each example prepared onto it.

  Picklable and small (the records travel as a `loader.RecordStore` or a lazy sequence):
  it runs in the loader's worker processes. Example j of global step s is stream
  position p = s * G + offset + j; in training its flip and scale come from
  `np.random.default_rng([seed, p, 1])`, so a batch depends only on (seed, step, host).
  A training image that cannot be read (`coco.CocoFormatError`: its file or its masks)
  is replaced, with data.corrupt_images = 'skip', by the next readable record of the
  same global step (on this canvas by construction), drawn with the slot's own rng;
  the batch then carries `_UNREADABLE`.
  """

  def __init__(self, records: Sequence[coco.ImageRecord], plan: loader.StepPlan,
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
    batch = empty_batch(self._batch, self._config, canvas_hw=(height, width))
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
      except coco.CocoFormatError as e:
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
    return prepare_example(self._records[index], self._config, canvas, rng)

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
      except coco.CocoFormatError:
        continue
    raise coco.CocoFormatError(f'{error} (no image of step {step} could be read in its '
                               'place)') from error


def _read_error(record: coco.ImageRecord, error: Exception) -> str:
  """The error naming the record's file and image id (a mask's error names neither)."""
  if isinstance(error, coco.ImageReadError):
    return str(error)
  return f'{error} (image id {record.image_id}, {record.path})'


def _record_canvases(dataset: coco.CocoDataset, data_config: ml_collections.ConfigDict,
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
  process) prepare them, `data.prefetch` batches ahead of the consumer.
  `wait_seconds` is the time the consumer has spent waiting in `__next__` (cumulative;
  the first batch includes the workers' start-up). Use as a context manager, or call
  `close()`, to stop the workers. A worker's error is raised by `__next__` (a bad
  image or annotation names its file and image id); a worker that dies raises a
  RuntimeError within about a second. In training, data.corrupt_images = 'skip' replaces
  an image that cannot be read instead (`_HostBatch`): a warning names it the first time
  and `skipped_images` counts them.
  """

  def __init__(self, dataset: coco.CocoDataset, data_config: ml_collections.ConfigDict,
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
    self.wait_seconds = 0.0
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
    start = time.perf_counter()
    try:
      batch = next(self._iterator)
    finally:
      self.wait_seconds += time.perf_counter() - start
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
