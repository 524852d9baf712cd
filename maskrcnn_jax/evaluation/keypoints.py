"""Keypoint evaluation (Keypoint R-CNN): detections to COCO keypoint results, and
COCOeval(iouType='keypoints') on the categories that declare keypoints (pycocotools).
"""

from typing import Any, Sequence

import jax
import numpy as np

from maskrcnn_jax.data import examples
from maskrcnn_jax.evaluation import coco_eval

# COCOeval's 10 keypoint stats, in order.
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
  from maskrcnn_jax.inference import keypoint_decoding  # pylint: disable=import-outside-toplevel
  outputs = jax.device_get({k: outputs[k] for k in _KEYPOINT_HOST_KEYS})
  results = []
  for i, image_id in enumerate(outputs['image_id']):
    if image_id == examples.PADDING_IMAGE_ID:
      continue
    keep = np.asarray(outputs['valid'][i], bool)
    info = outputs['image_info'][i]
    keypoints, scores = keypoint_decoding.keypoints_in_original(
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
  with coco_eval.quiet():
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
  per_category = coco_eval.per_category_ap(evaluator)
  print('\n'.join(coco_eval.per_category_lines('keypoints', per_category,
                                               gt.dataset['categories'])))
  return dict(stats, per_category=per_category)
