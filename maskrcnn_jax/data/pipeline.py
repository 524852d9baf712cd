"""Fixed-shape NumPy batches from a COCO-format dataset (host side; no jax).

One example: read and decode the image, resize (`data.resize_mode`), maybe flip,
normalize, pad to `data.image_size`; keep the first `data.max_instances` instances
(boxes in resized pixels, each gt mask cropped from the ORIGINAL-image mask over its
original box to `data.mask_size`, flipped with the image) and pad the rest. Keys, shapes
and dtypes are DESIGN.md's batch table (B = per-host batch, N = max_instances,
S = mask_size):
  images [B, H, W, 3] float32, image_info [B, 4] float32 (resized h, resized w, scale,
  flipped), gt_boxes [B, N, 4] float32, gt_classes [B, N] int32, gt_masks [B, N, S, S]
  uint8, gt_is_crowd [B, N] bool, image_id [B] int64.

Order: global step s holds the examples at positions [s * G, (s + 1) * G) of a stream
(G = global batch), host p the slice [p * B, (p + 1) * B) of it. Training streams epoch
after epoch, each a permutation of the dataset drawn from (seed, epoch), and the flip of
each position from (seed, position): batches depend only on (seed, step, host), so any
step can be resumed in O(1). Evaluation streams the dataset once in file order; positions
past its end are padding examples with image_id -1 and no instances.

Examples are prepared in a thread pool (`data.num_workers`), `data.prefetch` batches
ahead of the consumer, each written straight into its batch's preallocated arrays.
"""

import collections
import concurrent.futures
import logging
import math
from typing import Iterator

import ml_collections
import numpy as np

from maskrcnn_jax.data import coco
from maskrcnn_jax.data import tfds_coco
from maskrcnn_jax.data import transforms
from maskrcnn_jax.ops import masks as mask_ops

PADDING_IMAGE_ID = -1


def load_split(data_config: ml_collections.ConfigDict, split: str) -> coco.CocoDataset:
  """The 'train' or 'val' split named by the config.

  'coco' and 'shapes' read an annotation file and an image folder; 'tfds' reads the
  split `data.tfds_<split>_split` of `data.tfds_name` (default `coco_instances`) prepared
  in `data.tfds_data_dir`.
  Training filters images without non-crowd instances when `data.filter_empty_train`;
  evaluation keeps every image.
  """
  if split not in ('train', 'val'):
    raise ValueError(f"split must be 'train' or 'val'; got {split!r}")
  if data_config.dataset == 'tfds':
    return tfds_coco.load_tfds(
        data_config.tfds_data_dir, data_config[f'tfds_{split}_split'],
        name=data_config.tfds_name or tfds_coco.NAME,
        filter_empty=split == 'train' and data_config.filter_empty_train)
  if data_config.dataset not in ('coco', 'shapes'):
    raise ValueError(f"data.dataset must be 'coco', 'shapes' or 'tfds'; got "
                     f'{data_config.dataset!r}')
  if split == 'train':
    return coco.load_coco(data_config.train_annotations, data_config.train_images,
                          filter_empty=data_config.filter_empty_train)
  return coco.load_coco(data_config.val_annotations, data_config.val_images,
                        filter_empty=False)


def empty_batch(batch_size: int, data_config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """A batch of padding examples (zeros, image_id -1), with the batch table's shapes."""
  height, width = data_config.image_size
  n, s = data_config.max_instances, data_config.mask_size
  return {
      'images': np.zeros((batch_size, height, width, 3), np.float32),
      'image_info': np.zeros((batch_size, 4), np.float32),
      'gt_boxes': np.zeros((batch_size, n, 4), np.float32),
      'gt_classes': np.zeros((batch_size, n), np.int32),
      'gt_masks': np.zeros((batch_size, n, s, s), np.uint8),
      'gt_is_crowd': np.zeros((batch_size, n), bool),
      'image_id': np.full((batch_size,), PADDING_IMAGE_ID, np.int64),
  }


def fill_example(batch: dict[str, np.ndarray], slot: int, record: coco.ImageRecord,
                 data_config: ml_collections.ConfigDict, flip: bool) -> None:
  """Prepares one record (see the module docstring) into slot `slot` of an `empty_batch`."""
  cfg = data_config
  height, width = record.height, record.width
  new_h, new_w, scale = transforms.resize_shape(height, width, cfg.resize_mode, cfg.min_size,
                                                cfg.max_size)
  pad_h, pad_w = cfg.image_size
  if new_h > pad_h or new_w > pad_w:
    raise ValueError(f'{record.path} (image id {record.image_id}) resizes to {new_h} x '
                     f'{new_w}, larger than data.image_size {tuple(cfg.image_size)}')
  pixels = transforms.resize_image(coco.read_image(record), new_h, new_w)
  n = min(record.num_instances, cfg.max_instances)
  boxes = transforms.resize_boxes(record.boxes[:n], height, width, new_h, new_w)
  crops = batch['gt_masks'][slot]
  for i in range(n):
    mask = coco.decode_masks(record, [i])[0]
    crops[i] = mask_ops.crop_and_resize_mask(mask, record.boxes[i], cfg.mask_size)
  if flip:
    pixels = transforms.flip_image(pixels)
    boxes = transforms.flip_boxes(boxes, new_w)
    crops[:n] = crops[:n, :, ::-1].copy()
  batch['images'][slot, :new_h, :new_w] = transforms.normalize_image(pixels, cfg.mean_rgb,
                                                                     cfg.std_rgb)
  batch['image_info'][slot] = [new_h, new_w, scale, float(flip)]
  for key, values in (('gt_boxes', boxes), ('gt_classes', record.classes[:n]),
                      ('gt_is_crowd', record.is_crowd[:n])):
    batch[key][slot, :n] = values
  batch['image_id'][slot] = record.image_id


class Batches:
  """Iterator of per-host batches (dicts of NumPy arrays, see the module docstring).

  Use as a context manager, or call `close()`, to stop the worker threads.
  """

  def __init__(self, dataset: coco.CocoDataset, data_config: ml_collections.ConfigDict,
               global_batch_size: int, *, train: bool, seed: int = 0, start_step: int = 0,
               process_index: int = 0, process_count: int = 1):
    """Starts the workers on the first steps.

    Args:
      dataset: the split to read.
      data_config: `config.data`.
      global_batch_size: examples per step over all hosts; divisible by process_count.
      train: shuffle, flip (if `data.random_flip`) and repeat forever; else one pass in
        file order, the last batch padded, no flip.
      seed: order and flip seed (training).
      start_step: first global step to produce (resumption).
      process_index: this host, 0..process_count - 1 (`jax.process_index()`).
      process_count: number of hosts (`jax.process_count()`).
    """
    if global_batch_size % process_count:
      raise ValueError(f'global batch {global_batch_size} is not divisible by '
                       f'{process_count} hosts')
    if not len(dataset):
      raise ValueError(f'{dataset.annotation_file}: no images to read')
    self._dataset = dataset
    self._config = data_config
    self._global_batch = global_batch_size
    self._batch = global_batch_size // process_count
    self._train = train
    self._seed = seed
    self._offset = process_index * self._batch
    self._next_step = start_step  # the next step to submit to the workers
    self.num_steps = None if train else math.ceil(len(dataset) / global_batch_size)
    truncated = int(np.sum(dataset.instance_counts > data_config.max_instances))
    logging.log(logging.WARNING if truncated else logging.INFO,
                '%s: %d of %d images have more than data.max_instances = %d instances and '
                'keep only the first %d', dataset.annotation_file, truncated, len(dataset),
                data_config.max_instances, data_config.max_instances)
    self._permutations = {}
    self._pool = concurrent.futures.ThreadPoolExecutor(max(data_config.num_workers, 1))
    self._pending = collections.deque()  # (batch, futures) of submitted steps, in order
    for _ in range(max(data_config.prefetch, 1)):
      self._submit_next()

  def _permutation(self, epoch: int) -> np.ndarray:
    """[len(dataset)] int64 order of an epoch; the last two are cached (a batch may span two)."""
    if epoch not in self._permutations:
      self._permutations = {e: p for e, p in self._permutations.items() if e == epoch - 1}
      self._permutations[epoch] = np.random.default_rng(
          [self._seed, epoch]).permutation(len(self._dataset))
    return self._permutations[epoch]

  def _index_and_flip(self, position: int) -> tuple[int | None, bool]:
    """The record index at a stream position (None for padding) and whether to flip it."""
    size = len(self._dataset)
    if not self._train:
      return (position if position < size else None), False
    epoch, index = divmod(position, size)
    flip = self._config.random_flip and np.random.default_rng(
        [self._seed, position, 1]).random() < 0.5
    return int(self._permutation(epoch)[index]), bool(flip)

  def _fill(self, batch: dict[str, np.ndarray], slot: int, index: int, flip: bool) -> None:
    """Worker task: reads record `index` (lazy records read here, in parallel) into a slot."""
    fill_example(batch, slot, self._dataset.records[index], self._config, flip)

  def _submit_next(self) -> None:
    """Starts preparing the next step of this host (none past the end of evaluation)."""
    step = self._next_step
    if self.num_steps is not None and step >= self.num_steps:
      return
    self._next_step += 1
    batch = empty_batch(self._batch, self._config)
    futures = []
    first = step * self._global_batch + self._offset
    for slot in range(self._batch):
      index, flip = self._index_and_flip(first + slot)
      if index is not None:
        futures.append(self._pool.submit(self._fill, batch, slot, index, flip))
    self._pending.append((batch, futures))

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if not self._pending:
      raise StopIteration
    batch, futures = self._pending.popleft()
    self._submit_next()  # keeps `data.prefetch` steps in flight while this one finishes
    for future in futures:
      future.result()  # re-raises a worker's error, naming the file and id
    return batch

  def close(self) -> None:
    self._pending.clear()
    self._pool.shutdown(wait=True, cancel_futures=True)

  def __enter__(self) -> 'Batches':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
