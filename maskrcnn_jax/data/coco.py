"""COCO-format instance annotations: an annotation file plus an image folder (host side).

`load_coco` validates the file once (annotation_checks.py) and keeps one
`structures.ImageRecord` per image; images and masks are decoded lazily by the input
pipeline. Bad input is an error naming the file and the image or annotation id
(unreadable or truncated JSON, a missing image, an unknown category or image id, a
duplicate id, a malformed bbox or segmentation), or one of the documented skips
counted and logged (structures.py). Crowd regions (`iscrowd` 1) are kept with
`is_crowd` True: never positives, ignored in matching; a missing `iscrowd` reads as 0.

An annotation without a segmentation (no key, null, [] or {}, as Detectron2) is a
box-only instance, its segmentation None and counted on the dataset: Faster R-CNN
datasets train and evaluate (bbox) with the mask head off, and `check_masks` refuses
them to a mask head.

`check_num_classes` is the one rule tying a model's classes to a dataset's categories;
`check_evaluation_fields` refuses, before any inference, a file pycocotools cannot
evaluate.
"""

import collections
import json
import logging
import os
from typing import Any, Sequence

import numpy as np

from maskrcnn_jax.data import annotation_checks
from maskrcnn_jax.data import structures


def load_json(path: str) -> dict[str, Any]:
  """The annotation file's JSON; CocoFormatError if unreadable or without COCO's keys."""
  try:
    with open(path, 'rb') as f:
      data = json.load(f)
  except FileNotFoundError as e:
    raise structures.CocoFormatError(f'{path}: annotation file not found') from e
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise structures.CocoFormatError(
        f'{path}: not valid JSON (truncated or corrupt?): {e}') from e
  if not isinstance(data, dict) or not {'images', 'annotations', 'categories'} <= set(data):
    raise structures.CocoFormatError(
        f"{path}: a COCO annotation file needs 'images', 'annotations' and 'categories'")
  return data


def read_categories(annotation_file: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
  """(category ids, names) of an annotation file, sorted by id: class c is entry c - 1."""
  return _categories(load_json(annotation_file), annotation_file)


def _categories(data: dict[str, Any], annotation_file: str
                ) -> tuple[tuple[int, ...], tuple[str, ...]]:
  categories = sorted(data['categories'], key=lambda c: c['id'])
  category_ids = tuple(int(c['id']) for c in categories)
  if len(set(category_ids)) != len(category_ids):
    raise structures.CocoFormatError(f'{annotation_file}: duplicate category ids')
  return category_ids, tuple(str(c.get('name', c['id'])) for c in categories)


def check_num_classes(num_classes: int, category_ids: Sequence[int], source: str,
                      labels_may_be_ids: bool = False) -> tuple[int, ...]:
  """The dataset category id of each model class 1..num_classes; refuses a mismatch.

  Training maps the categories sorted by id to classes 1..K, so a model must have
  exactly K classes: fewer gives class indices past the classifier (NaN losses), more
  makes evaluation read classes as category ids. `labels_may_be_ids` (inference only)
  also accepts num_classes = the largest category id, torchvision's COCO models whose
  labels are the category ids themselves.

  Args:
    num_classes: config.model.num_classes (foreground classes).
    category_ids: the dataset's category ids, sorted.
    source: the annotation file (or TFDS split), for the message.
  """
  if num_classes == len(category_ids):
    return tuple(category_ids)
  if labels_may_be_ids and num_classes == max(category_ids):
    return tuple(range(1, num_classes + 1))
  also = (f' (or {max(category_ids)}, its largest category id, for a model whose labels '
          'are category ids, as torchvision\'s COCO models)' if labels_may_be_ids else '')
  raise ValueError(
      f'config.model.num_classes = {num_classes} but {source} has {len(category_ids)} '
      f'categories: num_classes must equal the number of categories{also}; set '
      f'--config.model.num_classes={len(category_ids)}')


def check_evaluation_fields(annotation_file: str) -> None:
  """Refuses an annotation file without the `iscrowd` and `area` COCOeval reads.

  pycocotools reads the file itself and fails only after inference; this fails first.
  """
  if not os.path.isfile(annotation_file):
    return  # a TFDS split: its ground truth is built from the records, fields included
  for ann in load_json(annotation_file)['annotations']:
    missing = [field for field in ('iscrowd', 'area') if field not in ann]
    if missing:
      raise structures.CocoFormatError(
          f"{annotation_file}: annotation id {ann.get('id')}: no {' and no '.join(missing)}"
          ' (COCO evaluation needs both: iscrowd 0 or 1, area = the mask area in pixels); '
          'scripts/check_dataset.py lists every annotation missing them')


def labelled_keypoints(keypoints: np.ndarray | None) -> int:
  """Keypoints with visibility > 0 in an image's [n, K, 3] keypoints (0 for None)."""
  return 0 if keypoints is None else int(np.count_nonzero(keypoints[..., 2] > 0))


def load_coco(annotation_file: str, image_dir: str, filter_empty: bool,
              min_keypoints: int = 0) -> structures.CocoDataset:
  """Reads and validates a COCO-format annotation file (see the module docstring).

  Args:
    annotation_file: path of the JSON file (`instances_*.json` format).
    image_dir: folder holding the images named by `file_name`.
    filter_empty: drop images without non-crowd instances (Detectron2 does for
      training, not for evaluation).
    min_keypoints: drop images with fewer labelled keypoints (0: keep all).

  Returns:
    the dataset; categories sorted by id map to classes 1..K.
  """
  annotation_file = os.fspath(annotation_file)
  data = load_json(annotation_file)
  skips = structures.Skips()

  category_ids, class_names = _categories(data, annotation_file)
  class_of = {cid: i + 1 for i, cid in enumerate(category_ids)}
  keypoint_names = annotation_checks.keypoint_names_of(data, annotation_file)
  with_keypoints = {int(c['id']) for c in data['categories'] if c.get('keypoints')}
  no_keypoints = np.zeros((len(keypoint_names), 3), np.float32)

  images = {}
  for image in data['images']:
    image_id = int(image['id'])
    if image_id in images:
      raise structures.CocoFormatError(f'{annotation_file}: duplicate image id {image_id}')
    images[image_id] = image

  instances = collections.defaultdict(list)
  seen_ids = set()
  for ann in data['annotations']:
    ann_id = ann.get('id')
    where = f'{annotation_file}: annotation id {ann_id}'
    if ann_id in seen_ids:
      raise structures.CocoFormatError(f'{where}: duplicate annotation id')
    seen_ids.add(ann_id)
    image = images.get(ann.get('image_id'))
    if image is None:
      raise structures.CocoFormatError(f"{where}: unknown image id {ann.get('image_id')}")
    if ann.get('category_id') not in class_of:
      raise structures.CocoFormatError(f"{where}: unknown category id {ann.get('category_id')}")
    height, width = int(image['height']), int(image['width'])
    segmentation = None  # box only (Detectron2 keeps such instances without a mask)
    if annotation_checks.has_segmentation(ann):
      segmentation = annotation_checks.check_segmentation(ann['segmentation'], height, width,
                                                          where, ann_id, skips)
      if segmentation is None:
        skips.add('no_valid_segmentation', ann_id)
        continue
    box = annotation_checks.check_box(ann.get('bbox'), height, width, where, ann_id, skips)
    if box is None:
      continue
    keypoints = no_keypoints
    if ann['category_id'] in with_keypoints and 'keypoints' in ann:
      keypoints = annotation_checks.check_keypoints(ann['keypoints'], len(keypoint_names), where)
    instances[int(image['id'])].append(
        (int(ann_id), box, class_of[ann['category_id']], bool(ann.get('iscrowd', 0)),
         segmentation, keypoints))

  records = []
  for image_id, image in images.items():
    anns = instances[image_id]
    if filter_empty and not any(not crowd for _, _, _, crowd, _, _ in anns):
      skips.add('empty_images', image_id)
      continue
    keypoints = (np.array([a[5] for a in anns], np.float32).reshape(
        -1, len(keypoint_names), 3) if keypoint_names else None)
    if min_keypoints and labelled_keypoints(keypoints) < min_keypoints:
      skips.add('few_keypoints', image_id)
      continue
    path = os.path.join(image_dir, image['file_name'])
    if not os.path.isfile(path):
      raise structures.CocoFormatError(
          f'{annotation_file}: image id {image_id}: missing image {path}')
    records.append(structures.ImageRecord(
        image_id=image_id, path=path, height=int(image['height']),
        width=int(image['width']),
        annotation_ids=np.array([a[0] for a in anns], np.int64),
        boxes=np.array([a[1] for a in anns], np.float32).reshape(-1, 4),
        classes=np.array([a[2] for a in anns], np.int32),
        is_crowd=np.array([a[3] for a in anns], bool),
        segmentations=tuple(a[4] for a in anns), source=annotation_file,
        keypoints=keypoints, keypoint_names=keypoint_names))

  num_instances = sum(r.num_instances for r in records)
  without_segmentation = [int(ann_id) for r in records
                          for ann_id, s in zip(r.annotation_ids, r.segmentations) if s is None]
  problems = any(count for reason, count in skips.counts.items()
                 if reason not in ('empty_images', 'few_keypoints'))
  logging.log(logging.WARNING if problems else logging.INFO,
              '%s: %d images, %d instances (%d crowd, %d without segmentation), %d classes; '
              'skipped: %s', annotation_file, len(records), num_instances,
              sum(int(r.is_crowd.sum()) for r in records), len(without_segmentation),
              len(category_ids), skips.summary())
  return structures.CocoDataset(records=records,
                                instance_counts=np.array([r.num_instances for r in records],
                                                         np.int64),
                                category_ids=category_ids,
                                class_names=class_names,
                                skipped=dict(skips.counts), annotation_file=annotation_file,
                                keypoint_names=keypoint_names,
                                num_without_segmentation=len(without_segmentation),
                                without_segmentation_ids=tuple(without_segmentation[:5]))


def check_masks(dataset: structures.CocoDataset, mask_head_enabled: bool) -> None:
  """Refuses, with the mask head on, a split with box-only instances (no segmentation).

  Their gt masks would be zeros taught as targets (training) or missing from the
  ground truth COCOeval reads for 'segm' (evaluation); boxes alone train and evaluate
  with the mask head off.
  """
  if not (mask_head_enabled and dataset.num_without_segmentation):
    return
  example = (f' (e.g. annotation id {dataset.without_segmentation_ids[0]})'
             if dataset.without_segmentation_ids else '')
  raise ValueError(
      f'{dataset.annotation_file}: {dataset.num_without_segmentation} annotations have no '
      f'segmentation{example} but model.mask_head.enabled is True: train boxes only with '
      '--config.model.mask_head.enabled=False, or give every annotation its segmentation')
