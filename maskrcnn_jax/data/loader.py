"""Which records each step reads, and the worker processes that read them (host side).

Steps. Every example of a global step shares one canvas (the record's canvas from
`transforms.choose_canvas` on its original size), so each batch has one shape on every
host. Training streams epochs. Epoch e groups the records by canvas, from the smallest
canvas to the largest; each group (with the leftovers moved onto it) is permuted from
(seed, e, canvas) and chunked into global batches, and its leftover (fewer than a global
batch) moves on to the smallest larger canvas holding its canvas. The largest canvas
holds every other: its last batch is topped up with the first records of its own
permutation, so every record is read at least once an epoch and every batch is full.
The epoch's batches are then shuffled from (seed, e). The batch count of each canvas
depends only on the group sizes, so every epoch has the same number of steps: step s ->
(epoch, batch) is O(1), one permutation per epoch (cached). Evaluation reads every record
once: canvas by canvas (smallest first), file order within a canvas, each canvas's last
batch padded with index -1.

Workers. `iterate` runs `make_batch(step)` in `num_workers` grain processes (process i
makes steps i, i + N, ...; grain interleaves them back in step order), so the stream does
not depend on the worker count. Batches come back through shared memory (a worker makes
its large arrays there: `shared_zeros`; smaller ones travel pickled), each segment's name
removed as soon as the consumer has mapped it (`Stream`). Records travel once:
`RecordStore` pickles each record into one file that every worker maps read-only. A
worker's exception is raised by the consumer's `next`; a worker that dies raises a
RuntimeError there within a second.
"""

import math
import mmap
import os
import pickle
import signal
import tempfile
import weakref
from typing import Any, Callable, Iterator, Sequence

from absl import flags
import numpy as np

PADDING_INDEX = -1
_ENDLESS = 2**62  # the step range of a training stream
SHARED_MIN_BYTES = 1 << 16  # smaller arrays go pickled, not in a shared segment


class StepPlan:
  """Global step -> its canvas and the global list of record indices (see module docstring)."""

  def __init__(self, record_canvas: np.ndarray, canvas_sizes: Sequence[tuple[int, int]],
               global_batch_size: int, *, train: bool, seed: int = 0):
    """Groups the records by canvas.

    Args:
      record_canvas: [num_records] int, the canvas index of each record.
      canvas_sizes: (height, width) of each canvas index; exactly one (the largest)
        holds all the others.
      global_batch_size: G, examples per global step.
      train: the endless shuffled stream; else one padded pass.
      seed: order seed (training).
    """
    record_canvas = np.asarray(record_canvas)
    if record_canvas.size and not 0 <= record_canvas.min() <= record_canvas.max() < len(
        canvas_sizes):
      raise ValueError(f'record canvases outside the {len(canvas_sizes)} canvases')
    # Smallest area first; a leftover moves to the smallest canvas holding its own.
    self._order = sorted(range(len(canvas_sizes)),
                         key=lambda k: canvas_sizes[k][0] * canvas_sizes[k][1])
    self._next = {}
    for k in self._order[:-1]:
      holders = [j for j in self._order if j != k and all(
          a >= b for a, b in zip(canvas_sizes[j], canvas_sizes[k]))]
      if not holders:
        raise ValueError(f'canvas {tuple(canvas_sizes[k])} fits in no larger canvas of '
                         f'{[tuple(s) for s in canvas_sizes]}')
      self._next[k] = holders[0]
    self._groups = {k: np.flatnonzero(record_canvas == k) for k in self._order}
    self._batch = global_batch_size
    self._train = train
    self._seed = seed
    self._epochs = {}
    g, root = global_batch_size, self._order[-1]
    self._counts = {}
    if train:
      totals = {k: len(group) for k, group in self._groups.items()}
      for k in self._order:
        self._counts[k] = math.ceil(totals[k] / g) if k == root else totals[k] // g
        if k != root:
          totals[self._next[k]] += totals[k] % g
      self.steps_per_epoch = sum(self._counts.values())
      self.num_steps = None
    else:
      self._counts = {k: math.ceil(len(self._groups[k]) / g) for k in self._order}
      self._first_step = np.cumsum([0] + [self._counts[k] for k in self._order])
      self.num_steps = int(self._first_step[-1])

  def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """[steps_per_epoch] canvas and [steps_per_epoch, G] record indices of an epoch.

    The last two epochs are cached (a worker's steps may straddle an epoch boundary).
    """
    if epoch not in self._epochs:
      g, root = self._batch, self._order[-1]
      carry = {k: [] for k in self._order}
      canvases, batches = [], []
      for k in self._order:
        rng = np.random.default_rng([self._seed, epoch, 2, k])
        members = rng.permutation(np.concatenate([self._groups[k]] + carry[k]))
        size = self._counts[k] * g
        if k == root:
          members = np.resize(members, size)  # tops up the last batch from the start
        else:
          carry[self._next[k]].append(members[size:])
        batches.append(members[:size].reshape(-1, g))
        canvases += [k] * self._counts[k]
      shuffle = np.random.default_rng([self._seed, epoch, 3]).permutation(len(canvases))
      self._epochs = {e: v for e, v in self._epochs.items() if e == epoch - 1}
      self._epochs[epoch] = np.array(canvases)[shuffle], np.concatenate(batches)[shuffle]
    return self._epochs[epoch]

  def step(self, step: int) -> tuple[int, np.ndarray]:
    """(canvas index, [G] int64 record indices, PADDING_INDEX past an evaluation canvas's end)."""
    if step < 0 or (self.num_steps is not None and step >= self.num_steps):
      raise IndexError(f'step {step} outside the {self.num_steps} evaluation steps')
    if self._train:
      epoch, index = divmod(step, self.steps_per_epoch)
      canvases, batches = self._epoch(epoch)
      return int(canvases[index]), batches[index]
    i = int(np.searchsorted(self._first_step, step, side='right')) - 1
    canvas = self._order[i]
    start = (step - self._first_step[i]) * self._batch
    indices = np.full(self._batch, PADDING_INDEX, np.int64)
    members = self._groups[canvas][start:start + self._batch]
    indices[:len(members)] = members
    return canvas, indices


class RecordStore(Sequence[Any]):
  """A record list pickled once into one file; each process maps it and unpickles on access.

  Sending the store to a worker sends only the file name and the offsets ([n + 1] int64),
  so a large dataset crosses to each worker process cheaply and its pages are shared.
  The creating process deletes the file on `close()` (or when the store is collected).
  """

  def __init__(self, records: Sequence[Any]):
    # A plain temporary file: once written its pages sit in the page cache, shared by the
    # processes mapping it (/dev/shm is often too small in containers).
    fd, self._path = tempfile.mkstemp(prefix='maskrcnn_jax_records_')
    offsets = [0]
    with os.fdopen(fd, 'wb') as f:
      for record in records:
        blob = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        f.write(blob)
        offsets.append(offsets[-1] + len(blob))
    self._offsets = np.array(offsets, np.int64)
    self._buffer = None
    self._remove = weakref.finalize(self, _remove_file, self._path)

  def __getstate__(self) -> dict[str, Any]:
    return {'path': self._path, 'offsets': self._offsets}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self._path, self._offsets, self._buffer = state['path'], state['offsets'], None
    self._remove = None  # only the creating process deletes the file

  def __len__(self) -> int:
    return len(self._offsets) - 1

  def __getitem__(self, index: int) -> Any:
    if self._buffer is None:
      with open(self._path, 'rb') as f:
        self._buffer = (mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                        if self._offsets[-1] else b'')
    if not -len(self) <= index < len(self):
      raise IndexError(f'record {index} of {len(self)}')
    index %= len(self)
    return pickle.loads(self._buffer[self._offsets[index]:self._offsets[index + 1]])

  @property
  def nbytes(self) -> int:
    return int(self._offsets[-1])

  def close(self) -> None:
    if self._remove is not None:
      self._remove()


def _remove_file(path: str) -> None:
  if os.path.exists(path):
    os.remove(path)


def shared_zeros(shape: Sequence[int], dtype: Any) -> np.ndarray:
  """A zeroed array that grain sends from a worker to the consumer without copying it.

  grain copies any other array of SHARED_MIN_BYTES or more into a fresh shared-memory
  segment after the batch is made (an extra write of every byte, ~2 ms per 1x image)
  and pickles smaller ones; a batch made in one in the first place saves that, and a
  fresh segment is zeros already. Only for arrays a worker returns (the consumer unlinks
  them, `Stream`); grain's own type, so grain sends it by name.
  """
  from grain._src.python.ipc import shared_memory_array  # pylint: disable=import-outside-toplevel

  return shared_memory_array.SharedMemoryArray(tuple(shape), dtype)


def _ignore_sigint(worker_index: int, num_workers: int) -> None:
  """A grain worker's start: a terminal's Ctrl-C reaches the whole process group, and
  the training loop stops the workers itself (train/loop.py)."""
  del worker_index, num_workers
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def iterate(make_batch: Callable[[int], dict[str, np.ndarray]], start_step: int,
            num_steps: int | None, num_workers: int, prefetch: int) -> 'Stream':
  """`make_batch(step)` for step = start_step, ... (endless when num_steps is None).

  Args:
    make_batch: picklable; runs in the worker processes.
    start_step: the first step.
    num_steps: the end of the steps (exclusive), or None.
    num_workers: worker processes; 0 makes every batch in the calling process, on demand.
    prefetch: batches made ahead of the consumer over all workers (at least one each).

  Returns:
    the batches (with `close()`), the workers already started.
  """
  import grain  # pylint: disable=import-outside-toplevel  # grain imports jax: only on use

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain 0.2.18 reads its absl flags (google/grain#1355)
  steps = grain.MapDataset.range(start_step, _ENDLESS if num_steps is None else num_steps)
  # No reader threads: each process makes its steps in order, one at a time.
  dataset = steps.map(make_batch).to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if num_workers:
    # Small arrays travel pickled: a segment each (image_id's 8 bytes) costs more.
    dataset = grain.experimental.WithOptionsIterDataset(
        dataset, grain.experimental.DatasetOptions(min_shm_size=SHARED_MIN_BYTES))
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=max(1, math.ceil(prefetch / num_workers))),
        worker_init_fn=_ignore_sigint)
  iterator = iter(dataset)
  iterator.start_prefetch()
  return Stream(iterator)


class Stream(Iterator[Any]):
  """grain's iterator; each batch's shared-memory segments are unlinked on arrival.

  grain unlinks a received segment only when its array is deleted (from a thread pool),
  and the last batch of a finite stream is deleted only by the cycle collector: grain's
  StopIteration keeps, through its traceback, the frame of the prefetch thread that
  fetched it. Nothing collects it before the exit, so Python's resource tracker
  reported "N leaked shared_memory objects" and removed them. A mapped segment
  needs no name: removing it (and its tracker entry) at once leaves nothing to leak; the
  memory is freed when the array is. (Batches dropped in flight by `close` are still
  unlinked by grain.)
  """

  def __init__(self, iterator: Any):
    self._iterator = iterator

  def __next__(self) -> Any:
    batch = next(self._iterator)
    for value in batch.values():
      _unlink_segment(value)
    return batch

  def close(self) -> None:
    self._iterator.close()


def _unlink_segment(array: Any) -> None:
  """Removes the name of the shared-memory segment under a received grain array."""
  # pylint: disable=import-outside-toplevel,protected-access
  from grain._src.python.ipc import shared_memory_array

  if isinstance(array, shared_memory_array.SharedMemoryArray) and array._unlink_on_del:
    array.shm.unlink()  # also unregisters it from the resource tracker
    array._unlink_on_del = False  # its deletion only unmaps it
