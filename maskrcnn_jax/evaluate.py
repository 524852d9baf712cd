"""COCO evaluation: sharded inference, masks pasted and RLE-encoded on the host, COCOeval.

`Evaluator(config, dataset, mesh)` compiles the forward pass once per canvas (fixed-shape
global batches of `config.eval.batch_size`, each on one canvas, raw uint8 pixels,
variables replicated, the batch sharded on 'data', outputs replicated so process 0 holds
every image's detections). Each call streams the split once; while the devices run the
next batches, a thread pool on process 0 moves finished outputs to the host, undoes the
canvas transpose of portraits, rescales boxes to original pixels, pastes the masks
(`ops.masks.paste_mask`, box region only) and RLE-encodes them. Padding examples
(image_id -1) of each canvas's last batch are dropped. `coco_metrics` then runs
pycocotools' COCOeval for 'bbox' and 'segm'.

Ground truth: the split's annotation file read by pycocotools when there is one (the
official protocol: the file's own areas, boxes and crowd regions); a TFDS split has no
file, so its ground truth is rebuilt from the dataset records (`ground_truth`).

Multi-host: only process 0 pastes, encodes, evaluates and writes files; the metrics are
then broadcast, so every process returns the same dict.
"""

import collections
import concurrent.futures
import contextlib
import io
import json
import logging
import os
import time
from typing import Any, Sequence

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
import tqdm

from maskrcnn_jax import parallel
from maskrcnn_jax import xla_options
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import transforms
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.ops import masks as mask_ops

# COCOeval.stats, in order.
STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
              'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')
IOU_TYPES = ('bbox', 'segm')
_MAX_HOST_THREADS = 8  # pasting and RLE threads of process 0


def ground_truth(dataset: coco.CocoDataset) -> COCO:
  """The pycocotools ground truth of a split.

  Read from `dataset.annotation_file` when it is a file. Otherwise (TFDS splits) built
  from the records: boxes as stored (clipped to the image), areas of the segmentation
  masks, crowd flags, and annotation ids renumbered 1..n (COCOeval takes id 0 for
  "unmatched").
  """
  if os.path.isfile(dataset.annotation_file):
    with _quiet():
      return COCO(dataset.annotation_file)
  images, annotations = [], []
  for record in dataset.records:
    images.append({'id': record.image_id, 'height': record.height, 'width': record.width})
    for i in range(record.num_instances):
      segmentation = record.segmentations[i]
      if isinstance(segmentation, dict) and not isinstance(segmentation['counts'], list):
        rle = {'size': segmentation['size'], 'counts': segmentation['counts']}  # compressed
      else:
        rle = mask_util.frPyObjects(segmentation, record.height, record.width)
        rle = mask_util.merge(rle) if isinstance(rle, list) else rle
      x1, y1, x2, y2 = (float(v) for v in record.boxes[i])
      annotations.append({
          'id': len(annotations) + 1, 'image_id': record.image_id,
          'category_id': dataset.category_ids[record.classes[i] - 1],
          'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': float(mask_util.area(rle)),
          'iscrowd': int(record.is_crowd[i]), 'segmentation': segmentation})
  gt = COCO()
  gt.dataset = {'images': images, 'annotations': annotations,
                'categories': [{'id': c, 'name': n} for c, n in
                               zip(dataset.category_ids, dataset.class_names)]}
  gt.createIndex()
  return gt


def _quiet():
  """Silences pycocotools' progress prints ('loading annotations...', 'DONE (t=0.1s)')."""
  return contextlib.redirect_stdout(io.StringIO())


def _load_results(coco_gt: COCO, results: list[dict]) -> COCO:
  """`coco_gt.loadRes` on copies of `results`; an empty list gives an empty result set.

  (loadRes adds keys to its input dicts and fails on an empty list.)
  """
  if results:
    with _quiet():
      return coco_gt.loadRes([dict(r) for r in results])
  empty = COCO()
  empty.dataset = {'images': list(coco_gt.dataset['images']),
                   'categories': list(coco_gt.dataset['categories']), 'annotations': []}
  empty.createIndex()
  return empty


def coco_metrics(coco_gt: COCO, bbox_results: list[dict], segm_results: list[dict],
                 class_names_by_category_id: dict[int, str]) -> dict[str, Any]:
  """COCOeval of box and mask results; prints both 12-number tables.

  Args:
    coco_gt: the ground truth.
    bbox_results: COCO results {'image_id', 'category_id', 'bbox' [x, y, w, h], 'score'}.
    segm_results: COCO results {'image_id', 'category_id', 'segmentation' (RLE),
      'score'}.
    class_names_by_category_id: names for the per-category APs.

  Returns:
    {'bbox': {STAT_NAMES..., 'per_category': {name: AP}}, 'segm': {...}}, values as
    pycocotools gives them (0..1, -1 where undefined). Without any results, COCOeval
    runs on an empty result set: 0 wherever there is ground truth.
  """
  metrics = {}
  for iou_type, results in zip(IOU_TYPES, (bbox_results, segm_results)):
    print(f'COCO {iou_type}: {len(results)} results')
    evaluator = COCOeval(coco_gt, _load_results(coco_gt, results), iou_type)
    with _quiet():
      evaluator.evaluate()
      evaluator.accumulate()
    evaluator.summarize()  # the table
    stats = dict(zip(STAT_NAMES, (float(s) for s in evaluator.stats)))
    # precision: [iou thresholds, recall thresholds, categories, area ranges, max dets];
    # area 'all', 100 detections, as stats[0] for one category.
    precision = evaluator.eval['precision']
    per_category = {}
    for k, category_id in enumerate(evaluator.params.catIds):
      p = precision[:, :, k, 0, -1]
      p = p[p > -1]
      per_category[class_names_by_category_id.get(category_id, str(category_id))] = (
          float(p.mean()) if p.size else -1.0)
    metrics[iou_type] = dict(stats, per_category=per_category)
  return metrics


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
  """{'bbox/AP': ..., 'segm/AR100': ..., 'images_per_second': ...} for TensorBoard."""
  flat = {f'{iou_type}/{name}': float(metrics[iou_type][name])
          for iou_type in IOU_TYPES if iou_type in metrics for name in STAT_NAMES}
  if 'images_per_second' in metrics:
    flat['images_per_second'] = float(metrics['images_per_second'])
  return flat


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
  """[H, W] bool -> COCO compressed RLE with str counts (JSON-ready)."""
  # A uint8 view of the bool mask, so the column-major copy is the only one.
  column_major = np.asfortranarray(np.asarray(mask, bool).view(np.uint8)[:, :, None])
  rle = mask_util.encode(column_major)[0]
  return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}


def detections_to_results(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                          mask_probs: np.ndarray, image_id: int, info: np.ndarray,
                          original_hw: Sequence[int], category_ids: Sequence[int],
                          eval_config: ml_collections.ConfigDict
                          ) -> tuple[list[dict], list[dict]]:
  """One image's valid detections -> COCO bbox and segm results in original pixels.

  The canvas transpose is undone first (`transforms.to_original_orientation`), so the
  results are those of the untransposed image through the same geometry.

  Args:
    boxes: [n, 4] float32 x1y1x2y2 in the canvas frame.
    scores: [n] float32.
    classes: [n] int32 classes 1..K.
    mask_probs: [n, M, M] float32 mask probabilities over each box, canvas frame.
    image_id: the dataset image id.
    info: [5] float32, the image's image_info row (maskrcnn_jax/image_info.py).
    original_hw: (height, width) of the original image.
    category_ids: dataset category id of each class 1..K.
    eval_config: `config.eval` (mask_threshold, mask_paste).
  """
  height, width = original_hw
  boxes, mask_probs, (resized_h, resized_w) = transforms.to_original_orientation(
      np.asarray(boxes, np.float32), np.asarray(mask_probs), info)
  boxes = transforms.resize_boxes(boxes, resized_h, resized_w, height, width)
  bbox_results, segm_results = [], []
  for box, score, label, probs in zip(boxes, scores, classes, mask_probs):
    common = {'image_id': int(image_id), 'category_id': int(category_ids[int(label) - 1]),
              'score': float(score)}
    x1, y1, x2, y2 = (float(v) for v in box)
    bbox_results.append(dict(common, bbox=[x1, y1, x2 - x1, y2 - y1]))
    mask = mask_ops.paste_mask(probs, box, height, width, threshold=eval_config.mask_threshold,
                               method=eval_config.mask_paste)
    segm_results.append(dict(common, segmentation=encode_mask(mask)))
  return bbox_results, segm_results


def _category_id_of_class(num_classes: int, dataset: coco.CocoDataset) -> tuple[int, ...]:
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

  def __init__(self, config: ml_collections.ConfigDict, dataset: coco.CocoDataset,
               mesh: jax.sharding.Mesh, model: mask_rcnn.MaskRCNN | None = None):
    """Args:
      config: a full config (`model`, `data` and `eval` sections are read).
      dataset: the split to evaluate, e.g. `pipeline.load_split(config.data, 'val')`.
      mesh: the data mesh (`parallel.data_mesh()`).
      model: the model; default `MaskRCNN(config.model)`.
    """
    self._config = config
    self._dataset = dataset
    self._mesh = mesh
    self.batch_size = config.eval.batch_size
    if self.batch_size % mesh.devices.size:
      raise ValueError(f'config.eval.batch_size = {self.batch_size} is not a multiple of '
                       f'the {mesh.devices.size} devices of the mesh')
    self._category_ids = _category_id_of_class(config.model.num_classes, dataset)
    self._is_main = jax.process_index() == 0
    self._coco_gt = ground_truth(dataset) if self._is_main else None
    self._class_names = dict(zip(dataset.category_ids, dataset.class_names))
    model = model or mask_rcnn.MaskRCNN(config.model)

    def forward(variables, images, image_info, image_id):
      outputs = model.apply(variables, images, image_info)
      return dict(outputs, image_info=image_info, image_id=image_id)

    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    self.forward = jax.jit(forward, in_shardings=(replicated, sharded, sharded, sharded),
                           out_shardings=replicated,
                           compiler_options=xla_options.compiler_options())

  def _host_results(self, outputs: dict[str, jax.Array]) -> tuple[list[dict], list[dict]]:
    """Worker task: one global batch of outputs -> COCO results (padding dropped)."""
    outputs = jax.device_get(outputs)
    bbox_results, segm_results = [], []
    for i, image_id in enumerate(outputs['image_id']):
      if image_id == pipeline.PADDING_IMAGE_ID:
        continue
      image = self._coco_gt.imgs[int(image_id)]
      keep = np.asarray(outputs['valid'][i], bool)
      boxes, segms = detections_to_results(
          outputs['boxes'][i][keep], outputs['scores'][i][keep],
          outputs['classes'][i][keep], outputs['masks'][i][keep], int(image_id),
          outputs['image_info'][i], (image['height'], image['width']),
          self._category_ids, self._config.eval)
      bbox_results += boxes
      segm_results += segms
    return bbox_results, segm_results

  def __call__(self, variables: Any, workdir: str | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Evaluates `variables` ({'params', 'batch_stats'}) on the whole split.

    Returns:
      `coco_metrics(...)` plus 'images' (evaluated), 'seconds' and 'images_per_second'
      (the whole call: input, device, pasting, RLE and COCOeval). Writes
      results_bbox.json, results_segm.json and metrics.json into `workdir` if given
      (process 0 only).
    """
    start = time.perf_counter()
    variables = parallel.replicate(variables, self._mesh)
    num_threads = min(os.cpu_count() or 1, _MAX_HOST_THREADS)
    pending = collections.deque()  # futures of batches being converted, in order
    bbox_results, segm_results = [], []

    def collect_oldest():
      boxes, segms = pending.popleft().result()
      bbox_results.extend(boxes)
      segm_results.extend(segms)

    bar = tqdm.tqdm(total=len(self._dataset), unit='img', desc='eval',
                    disable=not (progress and self._is_main))
    with pipeline.Batches(self._dataset, self._config.data, self.batch_size, train=False,
                          process_index=jax.process_index(),
                          process_count=jax.process_count()) as batches, \
        concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      for batch in batches:
        inputs = parallel.host_batch_to_global(
            {'images': batch['images'], 'image_info': batch['image_info'],
             'image_id': batch['image_id'].astype(np.int32)}, self._mesh)
        outputs = self.forward(variables, inputs['images'], inputs['image_info'],
                               inputs['image_id'])
        task = self._host_results if self._is_main else _block_until_ready
        pending.append(pool.submit(task, outputs))
        # Bounds the device memory held by outputs waiting for the host.
        while len(pending) > 2 * num_threads:
          collect_oldest()
        # Each canvas's last batch holds padding examples; hosts hold equal shares.
        real = int(np.sum(batch['image_id'] != pipeline.PADDING_IMAGE_ID))
        bar.update(min(real * jax.process_count(), len(self._dataset) - bar.n))
      while pending:
        collect_oldest()
    bar.close()

    metrics = None
    if self._is_main:
      metrics = coco_metrics(self._coco_gt, bbox_results, segm_results, self._class_names)
      seconds = time.perf_counter() - start
      metrics.update(images=len(self._dataset), seconds=seconds,
                     images_per_second=len(self._dataset) / seconds)
      logging.info('evaluated %d images in %.1f s (%.2f images/s): box AP %.4f, mask AP '
                   '%.4f', len(self._dataset), seconds, metrics['images_per_second'],
                   metrics['bbox']['AP'], metrics['segm']['AP'])
      if workdir:
        _write_json(workdir, bbox_results, segm_results, metrics)
    return _broadcast_from_process_0(metrics)


def _block_until_ready(outputs: Any) -> tuple[list, list]:
  """Worker task of processes other than 0: waits for the batch, keeps nothing."""
  jax.block_until_ready(outputs)
  return [], []


def _write_json(workdir: str, bbox_results: list[dict], segm_results: list[dict],
                metrics: dict[str, Any]) -> None:
  os.makedirs(workdir, exist_ok=True)
  for name, value in (('results_bbox.json', bbox_results),
                      ('results_segm.json', segm_results), ('metrics.json', metrics)):
    with open(os.path.join(workdir, name), 'w') as f:
      json.dump(value, f, indent=1 if name == 'metrics.json' else None)
