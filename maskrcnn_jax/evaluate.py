"""COCO evaluation: sharded inference, masks pasted and RLE-encoded on the host, COCOeval.

`Evaluator(config, dataset, mesh)` compiles the forward pass once per canvas (fixed-shape
global batches of `config.eval.batch_size`, each on one canvas, raw uint8 pixels,
variables replicated, the batch sharded on 'data', outputs replicated so process 0 holds
every image's detections). Each call streams the split once; while the devices run the
next batches, process 0 moves finished outputs to the host and hands them to
`eval.host_workers` spawned processes (`eval_host.batch_results`), which undo the canvas
transpose of portraits, rescale boxes to original pixels, paste each mask over its box
region only and RLE-encode it from that region (the pixels of `ops.masks.paste_mask`).
Padding examples (image_id -1) of each canvas's last batch are dropped. `coco_metrics`
then runs COCOeval for 'bbox' and 'segm' with `eval.engine` (maskrcnn_jax/coco_eval.py:
faster-coco-eval, or pycocotools as the reference), both at once in two processes
(`eval.coco_eval_workers`).

Ground truth: the split's annotation file when there is one (the official protocol: the
file's own areas, boxes and crowd regions); a TFDS split has no file, so its ground truth
is rebuilt from the dataset records (`ground_truth`).

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
from typing import Any, Sequence

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from pycocotools import mask as mask_util
import tqdm

from maskrcnn_jax import coco_eval
from maskrcnn_jax import eval_host
from maskrcnn_jax import parallel
from maskrcnn_jax import xla_options
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import transforms
from maskrcnn_jax.model import mask_rcnn

STAT_NAMES = coco_eval.STAT_NAMES  # COCOeval.stats, in order
IOU_TYPES = coco_eval.IOU_TYPES


def ground_truth(dataset: coco.CocoDataset) -> coco_eval.GroundTruth:
  """The COCO ground truth of a split.

  Read from `dataset.annotation_file` when it is a file. Otherwise (TFDS splits) built
  from the records: boxes as stored (clipped to the image), areas of the segmentation
  masks, crowd flags, and annotation ids renumbered 1..n (COCOeval takes id 0 for
  "unmatched").
  """
  if os.path.isfile(dataset.annotation_file):
    return coco_eval.GroundTruth.from_file(dataset.annotation_file)
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
  return coco_eval.GroundTruth({
      'images': images, 'annotations': annotations,
      'categories': [{'id': c, 'name': n} for c, n in
                     zip(dataset.category_ids, dataset.class_names)]})


def coco_metrics(coco_gt: coco_eval.GroundTruth, bbox_results: list[dict],
                 segm_results: list[dict], class_names_by_category_id: dict[int, str],
                 engine: str = 'faster_coco_eval', processes: int = 1) -> dict[str, Any]:
  """COCOeval of box and mask results; prints both 12-number tables.

  Args:
    coco_gt: the ground truth.
    bbox_results: COCO results {'image_id', 'category_id', 'bbox' [x, y, w, h], 'score'}.
    segm_results: COCO results {'image_id', 'category_id', 'segmentation' (RLE),
      'score'}; None for a model without a mask head (no 'segm' entry).
    class_names_by_category_id: names for the per-category APs.
    engine: `eval.engine` (coco_eval.ENGINES).
    processes: evaluations at once (`coco_eval.coco_tables`; `eval.coco_eval_workers`
      through `coco_eval.num_processes`).

  Returns:
    {'bbox': {STAT_NAMES..., 'per_category': {name: AP}}, 'segm': {...}}, values as
    pycocotools gives them (0..1, -1 where undefined). Without any results, COCOeval
    runs on an empty result set: 0 wherever there is ground truth.
  """
  results = {iou_type: r for iou_type, r in zip(IOU_TYPES, (bbox_results, segm_results))
             if r is not None}  # no mask head: no segm table
  metrics = coco_eval.coco_tables(coco_gt, results, engine, processes, print_tables=True)
  for table in metrics.values():
    table['per_category'] = {
        class_names_by_category_id.get(category_id, str(category_id)): ap
        for category_id, ap in table['per_category'].items()}
  return metrics


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
  """{'bbox/AP': ..., 'segm/AR100': ..., 'images_per_second': ...} for TensorBoard."""
  flat = {f'{iou_type}/{name}': float(metrics[iou_type][name])
          for iou_type in IOU_TYPES if iou_type in metrics for name in STAT_NAMES}
  if 'keypoints' in metrics:
    flat.update({f'keypoints/{name}': float(metrics['keypoints'][name])
                 for name in KEYPOINT_STAT_NAMES})
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

  `eval_host.image_results` with `eval_config`'s mask_threshold and mask_paste (the
  arrays and their frames are described there).
  """
  return eval_host.image_results(boxes, scores, classes, mask_probs, image_id, info,
                                 original_hw, category_ids, eval_config.mask_threshold,
                                 eval_config.mask_paste)


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
    self.forward = xla_options.jit(forward,
                                   in_shardings=(replicated, sharded, sharded, sharded),
                                   out_shardings=replicated)

  def _host_results(self, outputs: dict[str, jax.Array], processes: Any
                    ) -> tuple[list[dict], list[dict]]:
    """Thread task: one global batch of outputs to the host, then to a worker process
    (`eval_host.batch_results`; in this thread when `processes` is None)."""
    outputs = jax.device_get({k: outputs[k] for k in _HOST_KEYS if k in outputs})
    original_hw = [(0, 0) if image_id == pipeline.PADDING_IMAGE_ID else
                   (self._coco_gt.images[int(image_id)]['height'],
                    self._coco_gt.images[int(image_id)]['width'])
                   for image_id in outputs['image_id']]
    args = (outputs, original_hw, self._category_ids, self._config.eval.mask_threshold,
            self._config.eval.mask_paste)
    if processes is None:
      return eval_host.batch_results(*args)
    return processes.submit(eval_host.batch_results, *args).result()

  def __call__(self, variables: Any, workdir: str | None = None,
               progress: bool = True, checkpoint: str | None = None,
               step: int | None = None) -> dict[str, Any]:
    """Evaluates `variables` ({'params', 'batch_stats'}) on the whole split.

    Args:
      variables: the model variables.
      workdir: where results and metrics go (None: nowhere).
      progress: a progress bar on process 0.
      checkpoint, step: where `variables` came from, recorded in the metrics.

    Returns:
      `coco_metrics(...)` plus 'images' (evaluated), 'seconds' and 'images_per_second'
      (the whole call: input, device, pasting, RLE and COCOeval), 'checkpoint', 'step'
      and 'engine'. Writes results_bbox.json, results_segm.json and metrics.json into
      `workdir` if given (process 0 only); with a step, also metrics_<step>.json and
      the step's entry of metrics_by_step.json (earlier steps kept).
    """
    start = time.perf_counter()
    variables = parallel.replicate(variables, self._mesh)
    workers = eval_host.num_workers(self._config.eval.host_workers) if self._is_main else 0
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
        (eval_host.process_pool(workers) if workers else contextlib.nullcontext()
         ) as processes:
      for batch in batches:
        inputs = parallel.host_batch_to_global(
            {'images': batch['images'], 'image_info': batch['image_info'],
             'image_id': batch['image_id'].astype(np.int32)}, self._mesh)
        outputs = self.forward(variables, inputs['images'], inputs['image_info'],
                               inputs['image_id'])
        if self._is_main:
          pending.append(pool.submit(self._host_results, outputs, processes))
          if with_keypoints:
            keypoint_pending.append(pool.submit(
                keypoint_results, outputs, self._coco_gt.images, self._category_ids))
        else:
          pending.append(pool.submit(_block_until_ready, outputs))
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
      if not self._config.model.mask_head.enabled:
        segm_results = None
      metrics = coco_metrics(self._coco_gt, bbox_results, segm_results, self._class_names,
                             self._config.eval.engine,
                             coco_eval.num_processes(self._config.eval.coco_eval_workers))
      if with_keypoints:
        metrics['keypoints'] = keypoint_metrics(self._coco_gt, keypoint_list,
                                                tuple(self._config.eval.keypoint_oks_sigmas))
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
        _write_json(workdir, bbox_results, segm_results, metrics)
        if with_keypoints:
          _write_atomically(os.path.join(workdir, 'results_keypoints.json'), keypoint_list)
    return _broadcast_from_process_0(metrics)


def _block_until_ready(outputs: Any) -> tuple[list, list]:
  """Worker task of processes other than 0: waits for the batch, keeps nothing."""
  jax.block_until_ready(outputs)
  return [], []


def _write_json(workdir: str, bbox_results: list[dict], segm_results: list[dict],
                metrics: dict[str, Any]) -> None:
  os.makedirs(workdir, exist_ok=True)
  for name, value in (('results_bbox.json', bbox_results),
                      ('results_segm.json', segm_results)):
    if value is None:  # no mask head
      continue
    with open(os.path.join(workdir, name), 'w') as f:
      json.dump(value, f)
  write_metrics(workdir, metrics)


def write_metrics(workdir: str, metrics: dict[str, Any]) -> None:
  """metrics.json (the latest); with metrics['step'], also metrics_<step>.json and the
  step's entry of metrics_by_step.json ({step: metrics}, earlier steps kept)."""
  os.makedirs(workdir, exist_ok=True)
  names = ['metrics.json']
  step = metrics.get('step')
  if step is not None:
    names.append(f'metrics_{int(step)}.json')
    by_step_path = os.path.join(workdir, 'metrics_by_step.json')
    by_step = {}
    if os.path.isfile(by_step_path):
      with open(by_step_path) as f:
        by_step = json.load(f)
    by_step[str(int(step))] = metrics
    _write_atomically(by_step_path, dict(sorted(by_step.items(), key=lambda kv: int(kv[0]))))
  for name in names:
    _write_atomically(os.path.join(workdir, name), metrics)


def _write_atomically(path: str, value: Any) -> None:
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f, indent=1)
  os.replace(path + '.tmp', path)


# The outputs the host post-processing reads.
_HOST_KEYS = ('boxes', 'scores', 'classes', 'masks', 'valid', 'image_info', 'image_id')


# Keypoints (Keypoint R-CNN): COCOeval(iouType='keypoints') on the categories that declare
# keypoints, with pycocotools. COCOeval's 10 keypoint stats, in order.
KEYPOINT_STAT_NAMES = ('AP', 'AP50', 'AP75', 'APm', 'APl', 'AR', 'AR50', 'AR75', 'ARm', 'ARl')
_KEYPOINT_HOST_KEYS = ('boxes', 'scores', 'classes', 'valid', 'keypoint_heatmaps',
                       'image_info', 'image_id')


def keypoint_results(outputs: dict[str, Any], images: dict[int, dict],
                     category_ids: Sequence[int]) -> list[dict]:
  """One global batch's keypoints -> COCO keypoint results in original pixels.

  Args:
    outputs: the forward's outputs (on the host or the device): boxes [B, D, 4], scores,
      classes, valid [B, D], keypoint_heatmaps [B, D, K, H, H], image_info [B, 5],
      image_id [B].
    images: image id -> its ground-truth image entry ('height', 'width').
    category_ids: dataset category id of each class 1..K.

  Returns:
    {'image_id', 'category_id', 'keypoints' [x1, y1, s1, ...], 'score'} per detection:
    x, y as COCO's pixel indices (continuous - 0.5, as Detectron2 writes them), s the
    keypoint's heatmap score; 'score' is the detection's.
  """
  from maskrcnn_jax import image_info as info_lib  # pylint: disable=import-outside-toplevel
  from maskrcnn_jax.ops import keypoints as keypoint_ops  # pylint: disable=import-outside-toplevel
  outputs = jax.device_get({k: outputs[k] for k in _KEYPOINT_HOST_KEYS})
  results = []
  for i, image_id in enumerate(outputs['image_id']):
    if image_id == pipeline.PADDING_IMAGE_ID:
      continue
    keep = np.asarray(outputs['valid'][i], bool)
    info = outputs['image_info'][i]
    keypoints, scores = keypoint_ops.keypoints_in_original(
        outputs['keypoint_heatmaps'][i][keep], outputs['boxes'][i][keep],
        bool(info_lib.transposed(info)),
        (int(info_lib.resized_height(info)), int(info_lib.resized_width(info))),
        (int(images[int(image_id)]['height']), int(images[int(image_id)]['width'])))
    keypoints[..., :2] -= 0.5
    keypoints[..., 2] = scores
    for points, score, label in zip(keypoints, outputs['scores'][i][keep],
                                    outputs['classes'][i][keep]):
      results.append({'image_id': int(image_id),
                      'category_id': int(category_ids[int(label) - 1]),
                      'keypoints': [round(float(v), 3) for v in points.reshape(-1)],
                      'score': float(score)})
  return results


def keypoint_metrics(coco_gt: coco_eval.GroundTruth, results: list[dict],
                     oks_sigmas: Sequence[float] = ()) -> dict[str, Any]:
  """COCOeval(iouType='keypoints') of `results` on the categories declaring keypoints.

  Args:
    coco_gt: the ground truth (its annotations carry `keypoints` and `num_keypoints`).
    results: `keypoint_results` output.
    oks_sigmas: per-keypoint OKS sigmas (`eval.keypoint_oks_sigmas`); () keeps
      pycocotools' 17 COCO person sigmas, which needs K = 17.

  Returns:
    {KEYPOINT_STAT_NAMES...: float, 'per_category': {category id: AP}}; prints the table.
  """
  from pycocotools.cocoeval import COCOeval  # pylint: disable=import-outside-toplevel
  gt = coco_gt.coco('pycocotools')
  category_ids = [int(c['id']) for c in coco_gt.dataset['categories'] if c.get('keypoints')]
  if not category_ids:
    raise ValueError('keypoint evaluation: no category of the ground truth declares '
                     "'keypoints'")
  num_keypoints = len(next(c for c in coco_gt.dataset['categories'] if c.get('keypoints'))
                      ['keypoints'])
  if not oks_sigmas and num_keypoints != 17:
    raise ValueError(f'eval.keypoint_oks_sigmas: the dataset has {num_keypoints} keypoints; '
                     "COCO's person sigmas are for 17, so give one sigma per keypoint")
  if oks_sigmas and len(oks_sigmas) != num_keypoints:
    raise ValueError(f'eval.keypoint_oks_sigmas has {len(oks_sigmas)} sigmas for '
                     f'{num_keypoints} keypoints')
  print(f'COCO keypoints: {len(results)} results')
  with coco_eval._quiet():  # pylint: disable=protected-access
    if results:
      dt = gt.loadRes([dict(r) for r in results])
    else:
      dt = type(gt)()  # an empty result set (loadRes refuses an empty list)
      dt.dataset = {'images': list(gt.dataset['images']),
                    'categories': list(gt.dataset['categories']), 'annotations': []}
      dt.createIndex()
    evaluator = COCOeval(gt, dt, 'keypoints')
    evaluator.params.catIds = category_ids
    if oks_sigmas:
      evaluator.params.kpt_oks_sigmas = np.asarray(oks_sigmas, np.float64)
    evaluator.evaluate()
    evaluator.accumulate()
  evaluator.summarize()
  stats = dict(zip(KEYPOINT_STAT_NAMES, (float(s) for s in evaluator.stats)))
  return dict(stats, per_category=coco_eval.per_category_ap(evaluator))
