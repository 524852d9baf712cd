"""The evaluation benchmark (`scripts/benchmark.py --mode eval`): host post-processing and
COCOeval at COCO scale, on synthetic data.

- `synthetic_ground_truth`: a COCO ground-truth dict of COCO-sized images (480 x 640 and
  the like), 80 categories, 0-15 instances per image as polygons (ellipses), some crowd.
- `jittered_results`: exactly `per_image` detections per image from it: each instance
  found a few times with jittered boxes and masks (sometimes with a wrong class), the
  rest false positives, random scores.
- `time_host`: images/s of `coco_results.batch_results` (paste + RLE of `per_image`
  detections per image) in this process and in 1 and N spawned worker processes.
- `time_cocoeval`: seconds of one bbox and one segm COCOeval with each engine, one after
  the other and at once (`coco_eval.coco_tables`).
"""

import os
import resource
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_util

from benchmarks import machine
from benchmarks import tables
from benchmarks import timing
from maskrcnn_jax.evaluation import coco_eval
from maskrcnn_jax.evaluation import coco_results
from maskrcnn_jax.evaluation import worker_processes

IMAGE_SIZES = ((480, 640), (640, 480), (427, 640), (640, 427), (375, 500), (512, 640))
NUM_CATEGORIES = 80


def _ellipse(box: Sequence[float], num_points: int = 16) -> list[float]:
  """A flat polygon [x0, y0, ...] of the ellipse inscribed in an x1y1x2y2 box."""
  x1, y1, x2, y2 = box
  angles = np.linspace(0, 2 * np.pi, num_points, endpoint=False)
  xs = (x1 + x2) / 2 + (x2 - x1) / 2 * np.cos(angles)
  ys = (y1 + y2) / 2 + (y2 - y1) / 2 * np.sin(angles)
  return np.stack([xs, ys], -1).ravel().round(2).tolist()


def _random_box(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """x1y1x2y2 with log-uniform sides of 6..min(height, width) pixels, inside the image."""
  side = np.exp(rng.uniform(np.log(6), np.log(min(height, width)), 2))  # w, h
  x1 = rng.uniform(0, width - side[0])
  y1 = rng.uniform(0, height - side[1])
  return np.array([x1, y1, x1 + side[0], y1 + side[1]])


def synthetic_ground_truth(num_images: int, seed: int = 0,
                           crowd_fraction: float = 0.02) -> dict[str, Any]:
  """A COCO ground-truth dict (see the module docstring); about 5% of images are empty."""
  rng = np.random.default_rng(seed)
  images, annotations = [], []
  for image_id in range(1, num_images + 1):
    height, width = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
    images.append({'id': image_id, 'height': height, 'width': width})
    num_instances = 0 if rng.uniform() < 0.05 else int(rng.integers(1, 16))
    for _ in range(num_instances):
      box = _random_box(rng, height, width)
      polygon = _ellipse(box)
      rle = mask_util.frPyObjects([polygon], height, width)[0]
      x1, y1, x2, y2 = box
      annotations.append({
          'id': len(annotations) + 1, 'image_id': image_id,
          'category_id': int(rng.integers(1, NUM_CATEGORIES + 1)),
          'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': float(mask_util.area(rle)),
          'iscrowd': int(rng.uniform() < crowd_fraction), 'segmentation': [polygon]})
  categories = [{'id': c, 'name': f'category_{c}'} for c in range(1, NUM_CATEGORIES + 1)]
  return {'images': images, 'annotations': annotations, 'categories': categories}


def jittered_results(ground_truth: dict[str, Any], per_image: int = 100, seed: int = 1
                     ) -> tuple[list[dict], list[dict]]:
  """Exactly `per_image` bbox and segm (RLE) results per image (module docstring)."""
  rng = np.random.default_rng(seed)
  by_image = {image['id']: [] for image in ground_truth['images']}
  for annotation in ground_truth['annotations']:
    by_image[annotation['image_id']].append(annotation)
  bbox_results, segm_results = [], []
  for image in ground_truth['images']:
    height, width = image['height'], image['width']
    detections = []  # (box, category)
    for annotation in by_image[image['id']]:
      x, y, w, h = annotation['bbox']
      for _ in range(int(rng.integers(1, 4))):
        jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
        box = np.array([x, y, x + w, y + h]) + jitter
        category = annotation['category_id'] if rng.uniform() < 0.85 else int(
            rng.integers(1, NUM_CATEGORIES + 1))
        detections.append((box, category))
    detections = detections[:per_image]
    while len(detections) < per_image:
      detections.append((_random_box(rng, height, width),
                         int(rng.integers(1, NUM_CATEGORIES + 1))))
    for box, category in detections:
      box = np.clip(box, 0, [width, height, width, height])
      if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        box = np.array([box[0], box[1], box[0] + 1, box[1] + 1])
      common = {'image_id': image['id'], 'category_id': category,
                'score': float(rng.uniform(0.05, 1.0))}
      x1, y1, x2, y2 = (float(v) for v in box)
      bbox_results.append(dict(common, bbox=[x1, y1, x2 - x1, y2 - y1]))
      rle = mask_util.frPyObjects([_ellipse(box)], height, width)[0]
      segm_results.append(dict(common, segmentation={
          'size': [height, width], 'counts': rle['counts'].decode('ascii')}))
  return bbox_results, segm_results


def synthetic_outputs(batch: int, per_image: int = 100, mask_size: int = 28,
                      seed: int = 0) -> tuple[dict[str, np.ndarray], list[tuple[int, int]]]:
  """A batch of model outputs as the host receives them, and each image's original size.

  Images of 800 x 1067 resized from 480 x 640 (scale 5/3, not transposed); boxes with
  log-uniform sides, masks a smooth blob over each box (sigmoid of a quadratic with a
  random centre and spread), so their runs look like a mask head's.

  Returns:
    outputs: 'boxes' [B, D, 4], 'scores' [B, D], 'classes' [B, D], 'masks'
      [B, D, M, M] float32, 'valid' [B, D], 'image_info' [B, 5], 'image_id' [B].
    original_hw: [B] (480, 640).
  """
  rng = np.random.default_rng(seed)
  height, width, scale = 480, 640, 800 / 480
  boxes = np.stack([[_random_box(rng, height, width) for _ in range(per_image)]
                    for _ in range(batch)]) * scale
  grid = (np.arange(mask_size) + 0.5) / mask_size
  centre = rng.uniform(0.3, 0.7, (batch, per_image, 2, 1, 1))
  spread = rng.uniform(0.2, 0.5, (batch, per_image, 1, 1, 1))
  distance = ((grid[:, None] - centre[..., 1, :, :]) ** 2 +
              (grid[None, :] - centre[..., 0, :, :]) ** 2) / spread[..., 0, :, :] ** 2
  masks = (1 / (1 + np.exp(8 * (distance - 1)))).astype(np.float32)
  info = np.tile(np.array([800, 1067, scale, 0, 0], np.float32), (batch, 1))
  outputs = {'boxes': boxes.astype(np.float32),
             'scores': rng.uniform(0.05, 1, (batch, per_image)).astype(np.float32),
             'classes': rng.integers(1, NUM_CATEGORIES + 1, (batch, per_image)).astype(np.int32),
             'masks': masks, 'valid': np.ones((batch, per_image), bool),
             'image_info': info, 'image_id': np.arange(1, batch + 1, dtype=np.int32)}
  return outputs, [(height, width)] * batch


def time_host(num_images: int, workers: Sequence[int], per_image: int = 100,
              batch: int = 8, mask_paste: str = 'bilinear') -> dict[str, Any]:
  """Images/s of paste + RLE at `per_image` detections: {'processes_<n>': {...}}.

  0 workers runs in this process (one core); n > 0 spreads `batch`-image tasks over n
  spawned processes, every one of them started before the clock (`process_pool(started=
  True)`), the task count rounded up to a multiple of n. CPU ms per image are this
  process's (n = 0) or the workers' own (their CPU seconds over the images), so a
  machine that other jobs load shows as wall time above CPU time.
  """
  outputs, original_hw = synthetic_outputs(batch, per_image)
  category_ids = list(range(1, NUM_CATEGORIES + 1))
  args = (outputs, original_hw, category_ids, 0.5, mask_paste)
  rows = {}
  for n in workers:
    num_batches = -(-max(num_images // batch, 1) // max(n, 1)) * max(n, 1)
    if n == 0:
      coco_results.batch_results(*args)  # warm
      with timing.Stopwatch() as watch:
        for _ in range(num_batches):
          coco_results.batch_results(*args)
      seconds, cpu_seconds = watch.seconds, watch.cpu_seconds
    else:
      with worker_processes.process_pool(n, started=True) as pool:
        with timing.Stopwatch() as watch:
          cpu_seconds = sum(cpu for cpu, _ in pool.map(_timed_batch_results,
                                                       *zip(*[args] * num_batches)))
      seconds = watch.seconds
    images = num_batches * batch
    rows[f'processes_{n}'] = {'images': images, 'images_per_second': images / seconds,
                              'ms_per_image': 1e3 * seconds / images,
                              'cpu_ms_per_image': 1e3 * cpu_seconds / images}
  return rows


def _timed_batch_results(*args) -> tuple[float, tuple[list[dict], list[dict]]]:
  """Worker task: (its CPU seconds, `coco_results.batch_results(*args)`); the results come
  back to the main process as in evaluation."""
  with timing.Stopwatch() as watch:
    results = coco_results.batch_results(*args)
  return watch.cpu_seconds, results


def time_cocoeval(num_images: int, engines: Sequence[str], per_image: int = 100,
                  seed: int = 0, processes: int = 1) -> dict[str, Any]:
  """Seconds (wall and CPU) of a bbox and a segm COCOeval (results loading included)
  per engine, one after the other, and the APs; with `processes` > 1 also both at once
  (`coco_eval.coco_tables`: wall, this process's and the children's CPU seconds), whose
  tables must equal the sequential ones."""
  gt = synthetic_ground_truth(num_images, seed)
  bbox_results, segm_results = jittered_results(gt, per_image, seed + 1)
  ground_truth = coco_eval.GroundTruth(gt)
  results = {'bbox': bbox_results, 'segm': segm_results}
  rows = {'images': num_images, 'detections': len(bbox_results),
          'instances': len(gt['annotations'])}
  for engine in engines:
    ground_truth.coco(engine)  # the ground truth's index is built once per run
    sequential = {}
    for iou_type, iou_results in results.items():
      with timing.Stopwatch() as watch:
        sequential[iou_type] = coco_eval.coco_table(ground_truth, iou_results, iou_type,
                                                    engine)
      rows[f'{engine}/{iou_type}'] = {'seconds': watch.seconds,
                                      'cpu_seconds': watch.cpu_seconds,
                                      'AP': sequential[iou_type]['AP'],
                                      'AR100': sequential[iou_type]['AR100']}
    if processes > 1:
      children_start = resource.getrusage(resource.RUSAGE_CHILDREN)
      with timing.Stopwatch() as watch:
        concurrent = coco_eval.coco_tables(ground_truth, results, engine, processes,
                                           min_results=0)
      children = resource.getrusage(resource.RUSAGE_CHILDREN)
      if concurrent != sequential:
        raise AssertionError(f'{engine}: the concurrent COCOeval tables differ from the '
                             'sequential ones')
      rows[f'{engine}/concurrent'] = {
          'processes': processes, 'seconds': watch.seconds,
          'cpu_seconds': watch.cpu_seconds,
          'children_cpu_seconds': (children.ru_utime + children.ru_stime -
                                   children_start.ru_utime - children_start.ru_stime)}
  return rows


def run(host_images: int, workers: int, cocoeval_images: int, engines: Sequence[str],
        per_image: int = 100, mask_paste: str = 'bilinear') -> dict[str, Any]:
  """The whole eval benchmark: host rows with 0 (this process), 1 and `workers`
  processes, then COCOeval of `cocoeval_images` images per engine, sequential and with
  `coco_eval.num_processes(-1)` processes."""
  result = {'per_image': per_image, 'mask_paste': mask_paste, 'cpus': os.cpu_count(),
            'load_average': machine.load_average(),
            'host': time_host(host_images, sorted({0, 1, workers}), per_image,
                              mask_paste=mask_paste)}
  if cocoeval_images:
    result['cocoeval'] = time_cocoeval(cocoeval_images, engines, per_image,
                                       processes=coco_eval.num_processes(-1))
  result['load_average_after'] = machine.load_average()
  return result


def markdown_table(result: dict[str, Any]) -> str:
  """The docs/benchmarks.md rows of `run`'s result."""
  load = result['load_average']
  if 'load_average_after' in result:
    load += f" (after: {result['load_average_after']})"
  host_rows = [[int(name.split('_')[1]) or '1 (in process)', row['images'],
                tables.cell(row['images_per_second'], 1), tables.cell(row['ms_per_image'], 1),
                tables.cell(row['cpu_ms_per_image'], 1)]
               for name, row in result['host'].items()]
  lines = [f"Host post-processing, {result['per_image']} detections per image "
           f"(480 x 640 originals, {result['mask_paste']} paste + RLE), "
           f"{result['cpus']} CPUs, load {load}:", '']
  lines += tables.markdown_table(
      ['processes', 'images', 'images/s', 'ms per image', 'CPU ms per image'], host_rows)
  if 'cocoeval' in result:
    c = result['cocoeval']
    lines += ['', f"COCOeval of {c['images']} images x {result['per_image']} detections "
              f"({c['instances']} instances, synthetic), seconds (CPU seconds):", '']
    lines += tables.markdown_table(
        ['engine', 'bbox', 'segm', 'one after the other', 'at once', 'bbox AP', 'segm AP'],
        [_cocoeval_row(c, engine) for engine in dict.fromkeys(
            k.split('/')[0] for k in c if '/' in k)])
  return '\n'.join(lines) + '\n'


def _cocoeval_row(cocoeval: dict[str, Any], engine: str) -> list[str]:
  """One engine's cells: bbox and segm seconds, their sum, both at once, the APs."""
  bbox, segm = cocoeval[f'{engine}/bbox'], cocoeval[f'{engine}/segm']
  together = cocoeval.get(f'{engine}/concurrent')
  at_once = '' if together is None else (
      f"{together['seconds']:.1f} ({together['cpu_seconds']:.1f} + "
      f"{together['children_cpu_seconds']:.1f}), {together['processes']} processes")
  return [engine, f"{bbox['seconds']:.1f} ({bbox['cpu_seconds']:.1f})",
          f"{segm['seconds']:.1f} ({segm['cpu_seconds']:.1f})",
          f"{bbox['seconds'] + segm['seconds']:.1f}", at_once, f"{bbox['AP']:.4f}",
          f"{segm['AP']:.4f}"]
