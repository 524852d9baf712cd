"""COCO metrics of a split's results, and the files an evaluation writes.

`ground_truth` is a split's COCO ground truth (its annotation file, or rebuilt from the
records of a TFDS split); `coco_metrics` runs COCOeval for 'bbox' and 'segm'
(coco_eval.py) and names the per-category APs; `write_results` / `write_metrics` put
results_*.json and metrics*.json in the evaluation's workdir.
"""

import json
import os
from typing import Any

from pycocotools import mask as mask_util

from maskrcnn_jax.data import structures
from maskrcnn_jax.evaluation import coco_eval
from maskrcnn_jax.evaluation import keypoints as keypoint_eval

STAT_NAMES = coco_eval.STAT_NAMES  # COCOeval.stats, in order
IOU_TYPES = coco_eval.IOU_TYPES


def ground_truth(dataset: structures.CocoDataset) -> coco_eval.GroundTruth:
  """The COCO ground truth of a split.

  Read from `dataset.annotation_file` when it is a file. Otherwise (TFDS splits) built
  from the records: boxes as stored (clipped to the image), areas of the segmentation
  masks (of the box for a box-only instance, which has no 'segmentation'), crowd
  flags, and annotation ids renumbered 1..n (COCOeval takes id 0 for "unmatched").
  """
  if os.path.isfile(dataset.annotation_file):
    return coco_eval.GroundTruth.from_file(dataset.annotation_file)
  images, annotations = [], []
  for record in dataset.records:
    images.append({'id': record.image_id, 'height': record.height, 'width': record.width})
    for i in range(record.num_instances):
      x1, y1, x2, y2 = (float(v) for v in record.boxes[i])
      annotation = {'id': len(annotations) + 1, 'image_id': record.image_id,
                    'category_id': dataset.category_ids[record.classes[i] - 1],
                    'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': (x2 - x1) * (y2 - y1),
                    'iscrowd': int(record.is_crowd[i])}
      segmentation = record.segmentations[i]
      if segmentation is not None:  # None: a box-only instance
        if isinstance(segmentation, dict) and not isinstance(segmentation['counts'], list):
          rle = {'size': segmentation['size'], 'counts': segmentation['counts']}  # compressed
        else:
          rle = mask_util.frPyObjects(segmentation, record.height, record.width)
          rle = mask_util.merge(rle) if isinstance(rle, list) else rle
        annotation.update(area=float(mask_util.area(rle)), segmentation=segmentation)
      annotations.append(annotation)
  return coco_eval.GroundTruth({
      'images': images, 'annotations': annotations,
      'categories': [{'id': c, 'name': n} for c, n in
                     zip(dataset.category_ids, dataset.class_names)]})


def coco_metrics(coco_gt: coco_eval.GroundTruth, bbox_results: list[dict],
                 segm_results: list[dict], class_names_by_category_id: dict[int, str],
                 engine: str = 'faster_coco_eval', processes: int = 1) -> dict[str, Any]:
  """COCOeval of box and mask results; prints both 12-number tables, each followed by
  its per-category APs.

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
                 for name in keypoint_eval.KEYPOINT_STAT_NAMES})
  if 'images_per_second' in metrics:
    flat['images_per_second'] = float(metrics['images_per_second'])
  return flat


def write_results(workdir: str, bbox_results: list[dict], segm_results: list[dict],
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
    write_atomically(by_step_path, dict(sorted(by_step.items(), key=lambda kv: int(kv[0]))))
  for name in names:
    write_atomically(os.path.join(workdir, name), metrics)


def write_atomically(path: str, value: Any) -> None:
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f, indent=1)
  os.replace(path + '.tmp', path)
