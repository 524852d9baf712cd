"""Input pipeline throughput: images/s with N worker processes, stage times, bytes per image.

`measure_input(config, ...)` reads a COCO-format split as training does (`Batches` with
train=True: shuffled, augmented, one canvas per batch) and times it with nothing else
running: for each worker count, the seconds to produce `num_batches` batches after the
first from each worker (those include the workers' start-up; the first is reported).
Stage times come from `examples.prepare_example` run in this process on the first
examples of the split. `markdown(result)` renders the result as tables. Host side only
(no device work).
"""

import multiprocessing
import os
import time
from typing import Any, Sequence

import ml_collections
import numpy as np

from benchmarks import tables
from benchmarks import timing
from maskrcnn_jax.data import augment
from maskrcnn_jax.data import examples
from maskrcnn_jax.data import image_files
from maskrcnn_jax.data import mask_crops
from maskrcnn_jax.data import mask_decoding
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import transforms


def _cpu_seconds() -> float:
  """User + system CPU seconds of this process and its live children (the workers).

  Linux (/proc); elsewhere this process only.
  """
  total = time.process_time()
  ticks = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100
  for child in multiprocessing.active_children():
    try:
      with open(f'/proc/{child.pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    except OSError:
      continue
    total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
  return total


def _time_workers(dataset, config: ml_collections.ConfigDict, workers: int, batch_size: int,
                  num_batches: int, seed: int, step_seconds: float) -> dict[str, float]:
  """Images/s of `workers` processes over `num_batches` batches after one from each.

  The consumer sleeps `step_seconds` after each batch (a device step it overlaps); its
  wait is timed around each `next(batches)` (the pipeline carries no timers).
  """
  data = config.data.copy_and_resolve_references()
  data.num_workers = workers
  startup = timing.Stopwatch().start()
  with pipeline.Batches(dataset, data, batch_size, train=True, seed=seed) as batches:
    next(batches)
    first = startup.stop()
    for _ in range(workers - 1):  # every worker started: the timed batches are steady
      next(batches)
    wait = 0.0
    with timing.Stopwatch(cpu_clock=_cpu_seconds) as watch:
      for _ in range(num_batches):
        wait += timing.time_once(lambda: next(batches))[1]
        time.sleep(step_seconds)
  images = num_batches * batch_size
  return {'workers': workers, 'images': images, 'seconds': watch.seconds,
          'images_per_second': images / watch.seconds,
          'images_per_second_per_worker': images / watch.seconds / max(workers, 1),
          # CPU per image over all processes: the cost that sharing the CPUs does not hide.
          'cpu_ms_per_image': 1e3 * watch.cpu_seconds / images,
          'wait_seconds': wait, 'wait_share': wait / watch.seconds,
          'first_batch_seconds': first}


def _stage_times(dataset, config: ml_collections.ConfigDict, num_examples: int,
                 seed: int) -> dict[str, float]:
  """Mean milliseconds per image (this process) of the stages of `prepare_example`, each
  timed alone: decoding the image, resizing it, cropping its masks from their RLEs; and
  'total', `prepare_example` whole (CPU time too, 'total_cpu')."""
  stages = {'decode': 0.0, 'resize': 0.0, 'masks': 0.0}
  total = total_cpu = 0.0
  for position in range(num_examples):
    record = dataset.records[position % len(dataset)]
    canvas = transforms.choose_canvas(record.height, record.width, config.data, train=True)
    geometry = augment.draw_geometry(record.height, record.width, config.data, canvas,
                                     np.random.default_rng([seed, position, 1]))
    pixels, seconds = timing.time_once(lambda: image_files.read_image(record))
    stages['decode'] += seconds
    stages['resize'] += timing.time_once(lambda: transforms.resize_pixels(
        pixels, geometry.new_height, geometry.new_width, config.data))[1]
    stages['masks'] += timing.time_once(lambda: mask_crops.crop_and_resize_rles(
        [mask_decoding.instance_rle(record, i) for i in range(record.num_instances)],
        record.boxes, config.data.mask_size))[1]
    with timing.Stopwatch() as whole:
      examples.prepare_example(record, config.data, canvas,
                               np.random.default_rng([seed, position, 1]))
    total += whole.seconds
    # CPU time: what one process costs per image even on a machine shared with other work.
    total_cpu += whole.cpu_seconds
  per_image = {stage: 1e3 * seconds / num_examples for stage, seconds in stages.items()}
  per_image['total'] = 1e3 * total / num_examples
  per_image['total_cpu'] = 1e3 * total_cpu / num_examples
  return per_image


def _bytes_per_image(batch: dict[str, np.ndarray]) -> dict[str, float]:
  """Bytes of one example in the host -> device batch, per key and in all."""
  size = len(batch['image_id'])
  per_key = {key: value.nbytes / size for key, value in batch.items()}
  per_key['total'] = sum(per_key.values())
  return per_key


def measure_input(config: ml_collections.ConfigDict, num_workers: Sequence[int] = (1, 2),
                  num_batches: int = 10, batch_size: int | None = None, split: str = 'train',
                  seed: int = 0, step_seconds: float = 0.0) -> dict[str, Any]:
  """Measures the input pipeline on `split` of `config.data` (see module docstring).

  Args:
    config: the full config (`config.data` names the split; `config.train.batch_size`
      is the default batch).
    num_workers: worker counts to time (0: in this process).
    num_batches: batches timed per worker count, after the first.
    batch_size: images per batch (one host); None: config.train.batch_size.
    split: 'train' or 'val' (read as training reads it either way).
    seed: order and augmentation seed.
    step_seconds: a simulated device step after each batch (0: none, so images/s is the
      pipeline's own rate); 'wait_share' is then the share of the time spent waiting.

  Returns:
    JSON-able: 'runs' (per worker count: images_per_second, per worker, seconds,
    cpu_ms_per_image (all processes), wait_seconds and wait_share (in `next`),
    first_batch_seconds), 'step_seconds', 'scaling' (images/s of each count over the
    smallest positive count's), 'stage_ms' (mean ms per image of each preparation
    stage, one process; also 'total' (wall) and 'total_cpu' (CPU time of the process));
    'bytes_per_image' (host -> device batch, per key and total), 'file_bytes_per_image'
    (encoded images read), 'images', 'batch_size', 'cpus' (usable by this process),
    'load_average' (1-minute, at the end: other work sharing the CPUs).
  """
  batch_size = batch_size or config.train.batch_size
  dataset = pipeline.load_split(config.data, split)
  runs = [_time_workers(dataset, config, w, batch_size, num_batches, seed, step_seconds)
          for w in num_workers]
  base = min((r for r in runs if r['workers']), key=lambda r: r['workers'], default=runs[0])
  scaling = {str(r['workers']): r['images_per_second'] / base['images_per_second']
             for r in runs}
  with pipeline.Batches(dataset, config.data.copy_and_resolve_references(), batch_size,
                        train=True, seed=seed) as batches:
    sample = next(batches)
  paths = [r.path for r in dataset.records[:200]]
  return {
      'images': len(dataset), 'batch_size': batch_size, 'step_seconds': step_seconds,
      'cpus': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
              else os.cpu_count(),
      'load_average': os.getloadavg()[0],  # other work on the CPUs during the run
      'runs': runs, 'scaling': scaling,
      'stage_ms': _stage_times(dataset, config, min(len(dataset), 2 * batch_size), seed),
      'bytes_per_image': _bytes_per_image(sample),
      'file_bytes_per_image': float(np.mean([os.path.getsize(p) for p in paths
                                             if os.path.isfile(p)] or [0])),
  }


def markdown(result: dict[str, Any]) -> str:
  """`measure_input`'s result as Markdown tables."""
  runs = [[run['workers'], tables.cell(run['images_per_second'], 1),
           tables.cell(run['images_per_second_per_worker'], 1),
           f"{result['scaling'][str(run['workers'])]:.2f}x",
           tables.cell(run['cpu_ms_per_image'], 1), f"{100 * run['wait_share']:.0f}%",
           tables.cell(run['first_batch_seconds'], 1)] for run in result['runs']]
  lines = [f"Input pipeline: {result['images']} images, batch {result['batch_size']}, "
           f"{result['cpus']} CPUs (load average {result['load_average']:.1f}), simulated "
           f"device step {result['step_seconds']:.3f} s.", '']
  lines += tables.markdown_table(['worker processes', 'images/s', 'images/s per worker',
                                  'scaling', 'CPU ms per image', 'waiting',
                                  'first batch (s)'], runs)
  lines += [''] + tables.markdown_table(
      ['stage', 'ms per image (one process)'],
      [[stage, tables.cell(ms, 2)] for stage, ms in result['stage_ms'].items()])
  lines += [''] + tables.markdown_table(
      ['batch key', 'bytes per image'],
      [[key, f'{nbytes:,.0f}'] for key, nbytes in result['bytes_per_image'].items()])
  lines.append(f"\nEncoded image files: {result['file_bytes_per_image']:,.0f} bytes per image.")
  return '\n'.join(lines)
