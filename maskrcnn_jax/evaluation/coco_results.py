"""Detections to COCO results on the host: boxes in original pixels, masks as RLE.

`image_results` turns one image's detections (canvas frame) into COCO bbox and segm
result dicts in original-image pixels; `batch_results` does it for a batch of host
outputs and is what evaluation hands to its worker processes (JAX runs threads, so the
workers are spawned, worker_processes.py). Nothing here imports jax.
"""

from typing import Sequence

import numpy as np

from maskrcnn_jax.data import examples
from maskrcnn_jax.data import transforms
from maskrcnn_jax.evaluation import region_masks


def image_results(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                  mask_probs: np.ndarray, image_id: int, info: np.ndarray,
                  original_hw: Sequence[int], category_ids: Sequence[int],
                  mask_threshold: float, mask_paste: str
                  ) -> tuple[list[dict], list[dict]]:
  """One image's valid detections -> COCO bbox and segm results in original pixels.

  The canvas transpose is undone first (`transforms.to_original_orientation`).

  Args:
    boxes: [n, 4] float32 x1y1x2y2 in the canvas frame.
    scores: [n] float32.
    classes: [n] int32 classes 1..K.
    mask_probs: [n, M, M] float32 mask probabilities over each box, canvas frame; None
      for a model without a mask head (no segm results).
    image_id: the dataset image id.
    info: [5] float32, the image's image_info row (maskrcnn_jax/image_info.py).
    original_hw: (height, width) of the original image.
    category_ids: dataset category id of each class 1..K.
    mask_threshold, mask_paste: `config.eval.mask_threshold` / `mask_paste`.
  """
  height, width = (int(v) for v in original_hw)
  with_masks = mask_probs is not None
  if not with_masks:
    mask_probs = np.zeros((len(boxes), 1, 1), np.float32)
  boxes, mask_probs, (resized_h, resized_w) = transforms.to_original_orientation(
      np.asarray(boxes, np.float32), np.asarray(mask_probs), info)
  boxes = transforms.resize_boxes(boxes, resized_h, resized_w, height, width)
  corners = boxes.astype(np.float64)
  xywh = np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], axis=1)
  commons = [{'image_id': int(image_id), 'category_id': int(category_ids[label - 1]),
              'score': score}
             for label, score in zip(np.asarray(classes).astype(np.int64).tolist(),
                                     np.asarray(scores, np.float64).tolist())]
  bbox_results = [dict(common, bbox=bbox) for common, bbox in zip(commons, xywh.tolist())]
  if not with_masks:
    return bbox_results, []
  pasted = region_masks.paste_regions(mask_probs, corners, height, width, mask_threshold,
                                      mask_paste)
  runs = region_masks.runs_of_regions(pasted, height, width)
  segm_results = [dict(common, segmentation=rle) for common, rle in
                  zip(commons, region_masks.compress_runs(runs, height, width))]
  return bbox_results, segm_results


def batch_results(outputs: dict[str, np.ndarray], original_hw: Sequence[Sequence[int]],
                  category_ids: Sequence[int], mask_threshold: float, mask_paste: str
                  ) -> tuple[list[dict], list[dict]]:
  """One batch of host outputs -> COCO results; padding examples are dropped.

  Args:
    outputs: numpy 'boxes' [B, D, 4], 'scores' [B, D], 'classes' [B, D], 'masks'
      [B, D, M, M], 'valid' [B, D] bool, 'image_info' [B, 5], 'image_id' [B].
    original_hw: [B] (height, width) of each example's original image (ignored for
      padding examples).
  """
  bbox_results, segm_results = [], []
  for i, image_id in enumerate(outputs['image_id']):
    if image_id == examples.PADDING_IMAGE_ID:
      continue
    keep = np.asarray(outputs['valid'][i], bool)
    boxes, segms = image_results(
        outputs['boxes'][i][keep], outputs['scores'][i][keep], outputs['classes'][i][keep],
        outputs['masks'][i][keep] if 'masks' in outputs else None, int(image_id),
        outputs['image_info'][i], original_hw[i],
        category_ids, mask_threshold, mask_paste)
    bbox_results += boxes
    segm_results += segms
  return bbox_results, segm_results
