"""COCO evaluation of a model on one split: sharded inference, host results, COCOeval.

`Evaluator(config, dataset, mesh)` compiles the forward pass once per canvas
(fixed-shape global batches of `config.eval.batch_size`, each on one canvas, raw uint8
pixels, variables replicated, the batch sharded on 'data', outputs replicated so
process 0 holds every image's detections). Each call streams the split once; while the
devices run the next batches, process 0 moves finished outputs to the host and hands
them to `eval.host_workers` spawned processes (`coco_results.batch_results`), which undo
the canvas transpose of portraits, rescale boxes to original pixels, paste each mask
over its box region only and RLE-encode it from that region. Padding examples
(image_id -1) of each canvas's last batch are dropped. `metrics.coco_metrics` then runs
COCOeval for 'bbox' and 'segm' with `eval.engine` (coco_eval.py: faster-coco-eval, or
pycocotools as the reference), both at once in two processes (`eval.coco_eval_workers`).

Ground truth: the split's annotation file when there is one (the official protocol: the
file's own areas, boxes and crowd regions); a TFDS split has no file, so its ground
truth is rebuilt from the dataset records (`metrics.ground_truth`).

A call may also keep the detections of the split's first images (`keep_images`), as
`KeptImage`s in each image's own pixels, for a training run to draw into TensorBoard
without a second inference pass.

Multi-host: only process 0 pastes, encodes, evaluates and writes files; the metrics are
then broadcast, so every process returns the same dict.
"""

import collections
import concurrent.futures
import contextlib
import json
import logging
import os
import time
from typing import Any, NamedTuple, Sequence

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from pycocotools import mask as mask_util
import tqdm

from maskrcnn_jax.data import examples
from maskrcnn_jax.data import image_files
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import structures
from maskrcnn_jax.evaluation import coco_eval
from maskrcnn_jax.evaluation import coco_results
from maskrcnn_jax.evaluation import keypoints as keypoint_eval
from maskrcnn_jax.evaluation import metrics as metrics_lib
from maskrcnn_jax.evaluation import worker_processes
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.runtime import compiler
from maskrcnn_jax.runtime import distributed

# The outputs the host post-processing reads.
_HOST_KEYS = ('boxes', 'scores', 'classes', 'masks', 'valid', 'image_info', 'image_id')


def category_id_of_class(num_classes: int, dataset: structures.CocoDataset) -> tuple[int, ...]:
  """The dataset category id of each model class 1..K.

  A model with the dataset's number of classes uses its contiguous mapping; a model with
  a class for every category id (torchvision's COCO models: 90 classes, labels are
  COCO category ids) keeps the label as the id.
  """
  if num_classes == dataset.num_classes:
    return tuple(dataset.category_ids)
  if num_classes >= max(dataset.category_ids):
    logging.info('%d model classes for %d categories: labels are taken as category ids',
                 num_classes, dataset.num_classes)
    return tuple(range(1, num_classes + 1))
  raise ValueError(f'config.model.num_classes = {num_classes} but {dataset.annotation_file} '
                   f'has {dataset.num_classes} categories (ids up to '
                   f'{max(dataset.category_ids)})')


class KeptImage(NamedTuple):
  """One evaluated image and its detections, in the original image's pixels."""
  image_id: int
  pixels: np.ndarray  # [height, width, 3] uint8 RGB
  # As a `Predictor` gives them: boxes [n, 4] float32 x1y1x2y2, scores [n] float32,
  # classes [n] int32 category ids; masks [n, height, width] bool with the mask head,
  # keypoints [n, K, 3] (x, y, 1) and keypoint_scores [n, K] with the keypoint head.
  detections: dict[str, np.ndarray]


def kept_image(record: structures.ImageRecord, bbox_results: Sequence[dict],
               segm_results: Sequence[dict] | None,
               keypoint_results: Sequence[dict] | None) -> KeptImage:
  """`record`'s image and its detections, from its COCO results (in their order).

  Args:
    record: the image.
    bbox_results: its COCO bbox results (xywh boxes, category ids).
    segm_results: its segm results, one per bbox result (RLE masks); None: no masks.
    keypoint_results: its keypoint results, one per bbox result; None: no keypoints.
  """
  xywh = np.array([r['bbox'] for r in bbox_results], np.float32).reshape(-1, 4)
  detections = {'boxes': np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
                'scores': np.array([r['score'] for r in bbox_results], np.float32),
                'classes': np.array([r['category_id'] for r in bbox_results], np.int32)}
  if segm_results is not None:
    masks = np.zeros((len(segm_results), record.height, record.width), bool)
    if segm_results:
      masks = mask_util.decode([r['segmentation'] for r in segm_results]).transpose(2, 0, 1)
    detections['masks'] = masks.astype(bool)
  if keypoint_results is not None:
    points = np.array([r['keypoints'] for r in keypoint_results],
                      np.float32).reshape(len(keypoint_results), -1, 3)
    detections['keypoint_scores'] = points[..., 2].copy()
    points[..., :2] += 0.5  # COCO's pixel indices back to continuous coordinates
    points[..., 2] = 1.0
    detections['keypoints'] = points
  return KeptImage(record.image_id, image_files.read_image(record), detections)


def _broadcast_from_process_0(value: Any) -> Any:
  """A JSON-serializable value of process 0, on every process."""
  if jax.process_count() == 1:
    return value
  data = np.frombuffer(json.dumps(value).encode(), np.uint8) if jax.process_index() == 0 \
      else np.zeros(0, np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int64(data.size)))
  data = np.pad(data, (0, size - data.size))
  return json.loads(bytes(multihost_utils.broadcast_one_to_all(data)).decode())


class Evaluator:
  """COCO evaluation of a model on one split (see the module docstring).

  Usage: `evaluator = Evaluator(config, dataset, mesh)` once, then
  `metrics = evaluator(variables, workdir=...)` as often as needed.
  """

  def __init__(self, config: ml_collections.ConfigDict, dataset: structures.CocoDataset,
               mesh: jax.sharding.Mesh, model: mask_rcnn.MaskRCNN | None = None):
    """Args:
      config: a full config (`model`, `data` and `eval` sections are read).
      dataset: the split to evaluate, e.g. `pipeline.load_split(config.data, 'val')`.
      mesh: the data mesh (`distributed.data_mesh()`).
      model: the model; default `MaskRCNN(config.model)`.
    """
    self._config = config
    self._dataset = dataset
    self._mesh = mesh
    self.batch_size = config.eval.batch_size
    if self.batch_size % mesh.devices.size:
      raise ValueError(f'config.eval.batch_size = {self.batch_size} is not a multiple of '
                       f'the {mesh.devices.size} devices of the mesh')
    self._category_ids = category_id_of_class(config.model.num_classes, dataset)
    self._is_main = jax.process_index() == 0
    self._coco_gt = metrics_lib.ground_truth(dataset) if self._is_main else None
    self._class_names = dict(zip(dataset.category_ids, dataset.class_names))
    # The first images of the split and their detections, by the last call's `keep_images`.
    self.kept_images: list[KeptImage] = []
    model = model or mask_rcnn.MaskRCNN(config.model)

    def forward(variables, images, image_info, image_id):
      outputs = model.apply(variables, images, image_info)
      return dict(outputs, image_info=image_info, image_id=image_id)

    replicated, sharded = distributed.replicated(mesh), distributed.batch_sharding(mesh)
    self.forward = compiler.jit(forward, compiler.mesh_platform(mesh),
                                in_shardings=(replicated, sharded, sharded, sharded),
                                out_shardings=replicated)

  def _host_results(self, outputs: dict[str, jax.Array], processes: Any
                    ) -> tuple[list[dict], list[dict]]:
    """Thread task: one global batch of outputs to the host, then to a worker process
    (`coco_results.batch_results`; in this thread when `processes` is None)."""
    outputs = jax.device_get({k: outputs[k] for k in _HOST_KEYS if k in outputs})
    original_hw = [(0, 0) if image_id == examples.PADDING_IMAGE_ID else
                   (self._coco_gt.images[int(image_id)]['height'],
                    self._coco_gt.images[int(image_id)]['width'])
                   for image_id in outputs['image_id']]
    args = (outputs, original_hw, self._category_ids, self._config.eval.mask_threshold,
            self._config.eval.mask_paste)
    if processes is None:
      return coco_results.batch_results(*args)
    return processes.submit(coco_results.batch_results, *args).result()

  def _kept_images(self, count: int, bbox_results: list[dict], segm_results: list[dict] | None,
                   keypoint_list: list[dict] | None) -> list[KeptImage]:
    """The split's first `count` images and their detections (`kept_image`)."""
    records = [self._dataset.records[i] for i in range(min(count, len(self._dataset)))]
    results = {record.image_id: ([], [], []) for record in records}
    for column, listed in enumerate((bbox_results, segm_results, keypoint_list)):
      for result in listed or ():
        if result['image_id'] in results:
          results[result['image_id']][column].append(result)
    return [kept_image(record, results[record.image_id][0],
                       None if segm_results is None else results[record.image_id][1],
                       None if keypoint_list is None else results[record.image_id][2])
            for record in records]

  def __call__(self, variables: Any, workdir: str | None = None,
               progress: bool = True, checkpoint: str | None = None,
               step: int | None = None, keep_images: int = 0) -> dict[str, Any]:
    """Evaluates `variables` ({'params', 'batch_stats'}) on the whole split.

    Args:
      variables: the model variables.
      workdir: where results and metrics go (None: nowhere).
      progress: a progress bar on process 0.
      checkpoint, step: where `variables` came from, recorded in the metrics.
      keep_images: on process 0, keep the first `keep_images` images of the split with
        their detections in `self.kept_images` (`KeptImage`s; [] on other processes).

    Returns:
      `metrics_lib.coco_metrics(...)` plus 'images' (evaluated), 'seconds' and 'images_per_second'
      (the whole call: input, device, pasting, RLE and COCOeval), 'checkpoint', 'step'
      and 'engine'. Writes results_bbox.json, results_segm.json and metrics.json into
      `workdir` if given (process 0 only); with a step, also metrics_<step>.json and
      the step's entry of metrics_by_step.json (earlier steps kept).
    """
    start = time.perf_counter()
    variables = distributed.replicate(variables, self._mesh)
    workers = worker_processes.num_workers(self._config.eval.host_workers) if self._is_main else 0
    num_threads = workers or min(os.cpu_count() or 1, 8)
    pending = collections.deque()  # futures of batches being converted, in order
    bbox_results, segm_results = [], []
    with_keypoints = self._config.model.keypoint_head.enabled and self._is_main
    keypoint_pending, keypoint_list = collections.deque(), []  # keypoints: their own tasks

    def collect_oldest():
      boxes, segms = pending.popleft().result()
      bbox_results.extend(boxes)
      segm_results.extend(segms)
      if keypoint_pending:
        keypoint_list.extend(keypoint_pending.popleft().result())

    bar = tqdm.tqdm(total=len(self._dataset), unit='img', desc='eval',
                    disable=not (progress and self._is_main))
    with pipeline.Batches(self._dataset, self._config.data, self.batch_size, train=False,
                          process_index=jax.process_index(),
                          process_count=jax.process_count()) as batches, \
        concurrent.futures.ThreadPoolExecutor(num_threads) as pool, \
        (worker_processes.process_pool(workers) if workers else contextlib.nullcontext()
         ) as processes:
      for batch in batches:
        inputs = distributed.host_batch_to_global(
            {'images': batch['images'], 'image_info': batch['image_info'],
             'image_id': batch['image_id'].astype(np.int32)}, self._mesh)
        outputs = self.forward(variables, inputs['images'], inputs['image_info'],
                               inputs['image_id'])
        if self._is_main:
          pending.append(pool.submit(self._host_results, outputs, processes))
          if with_keypoints:
            keypoint_pending.append(pool.submit(
                keypoint_eval.keypoint_results, outputs, self._coco_gt.images, self._category_ids))
        else:
          pending.append(pool.submit(_block_until_ready, outputs))
        # Bounds the device memory held by outputs waiting for the host.
        while len(pending) > 2 * num_threads:
          collect_oldest()
        # Each canvas's last batch holds padding examples; hosts hold equal shares.
        real = int(np.sum(batch['image_id'] != examples.PADDING_IMAGE_ID))
        bar.update(min(real * jax.process_count(), len(self._dataset) - bar.n))
      while pending:
        collect_oldest()
    bar.close()

    metrics = None
    self.kept_images = []
    if self._is_main:
      if not self._config.model.mask_head.enabled:
        segm_results = None
      self.kept_images = self._kept_images(keep_images, bbox_results, segm_results,
                                           keypoint_list if with_keypoints else None)
      eval_config = self._config.eval
      metrics = metrics_lib.coco_metrics(self._coco_gt, bbox_results, segm_results,
                                         self._class_names, eval_config.engine,
                                         coco_eval.num_processes(eval_config.coco_eval_workers))
      if with_keypoints:
        metrics['keypoints'] = keypoint_eval.keypoint_metrics(
            self._coco_gt, keypoint_list, tuple(eval_config.keypoint_oks_sigmas))
        metrics['keypoints']['per_category'] = {
            self._class_names.get(c, str(c)): ap
            for c, ap in metrics['keypoints']['per_category'].items()}
      seconds = time.perf_counter() - start
      metrics.update(images=len(self._dataset), seconds=seconds,
                     images_per_second=len(self._dataset) / seconds,
                     checkpoint=checkpoint, step=step, engine=self._config.eval.engine)
      logging.info('evaluated %d images in %.1f s (%.2f images/s): box AP %.4f, mask AP '
                   '%.4f', len(self._dataset), seconds, metrics['images_per_second'],
                   metrics['bbox']['AP'], metrics.get('segm', {}).get('AP', float('nan')))
      if workdir:
        metrics_lib.write_results(workdir, bbox_results, segm_results, metrics)
        if with_keypoints:
          metrics_lib.write_atomically(os.path.join(workdir, 'results_keypoints.json'),
                                       keypoint_list)
    return _broadcast_from_process_0(metrics)


def _block_until_ready(outputs: Any) -> tuple[list, list]:
  """Worker task of processes other than 0: waits for the batch, keeps nothing."""
  jax.block_until_ready(outputs)
  return [], []
