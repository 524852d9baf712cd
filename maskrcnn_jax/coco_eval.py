"""The COCOeval engine: faster-coco-eval (C++) by default, pycocotools as the reference.

`coco_table(ground_truth, results, iou_type, engine)` runs one COCOeval ('bbox' or
'segm') and returns its 12 numbers and per-category APs. Both engines read the same
ground-truth dict (a COCO annotation file's content) and the same results; faster-coco-eval
is a C++ port of pycocotools' evaluateImg/accumulate and gives the same tables
(tests/test_coco_eval.py compares all 12 numbers for equality on the real COCO slice and
on synthetic cases). Config key: `eval.engine`.
"""

import contextlib
import copy
import io
import json
import os
from typing import Any

import numpy as np

ENGINES = ('faster_coco_eval', 'pycocotools')
# COCOeval.stats, in order.
STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
              'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')


def _quiet():
  """Silences the engines' progress prints ('loading annotations...', 'DONE (t=0.1s)')."""
  return contextlib.redirect_stdout(io.StringIO())


def _modules(engine: str):
  """(COCO, COCOeval) classes of `engine`."""
  if engine == 'faster_coco_eval':
    from faster_coco_eval import COCO  # pylint: disable=import-outside-toplevel
    from faster_coco_eval import COCOeval_faster  # pylint: disable=import-outside-toplevel
    return COCO, COCOeval_faster
  if engine == 'pycocotools':
    from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel
    from pycocotools.cocoeval import COCOeval  # pylint: disable=import-outside-toplevel
    return COCO, COCOeval
  raise ValueError(f'config.eval.engine must be one of {ENGINES}; got {engine!r}')


class GroundTruth:
  """A split's COCO ground truth (the annotation-file dict), indexed once per engine.

  Each engine gets its own deep copy: both add keys ('ignore', 'rle') to the annotation
  dicts they evaluate.
  """

  def __init__(self, dataset: dict[str, Any]):
    for key in ('images', 'annotations', 'categories'):
      if key not in dataset:
        raise ValueError(f"COCO ground truth has no '{key}' list")
    self.dataset = dataset
    self.images = {int(image['id']): image for image in dataset['images']}
    self._indexed = {}

  @classmethod
  def from_file(cls, path: str | os.PathLike) -> 'GroundTruth':
    if not os.path.isfile(path):
      raise FileNotFoundError(f'no COCO annotation file {path}')
    with open(path) as f:
      return cls(json.load(f))

  def coco(self, engine: str):
    """`engine`'s COCO object of the ground truth (built on first use)."""
    if engine not in self._indexed:
      coco_class, _ = _modules(engine)
      gt = coco_class()
      gt.dataset = copy.deepcopy(self.dataset)
      with _quiet():
        gt.createIndex()
      self._indexed[engine] = gt
    return self._indexed[engine]


def _load_results(engine: str, coco_gt: Any, results: list[dict]) -> Any:
  """`coco_gt.loadRes` on copies of `results`; an empty list gives an empty result set."""
  coco_class, _ = _modules(engine)
  if results:
    with _quiet():
      return coco_gt.loadRes([dict(r) for r in results])
  empty = coco_class()
  empty.dataset = {'images': list(coco_gt.dataset['images']),
                   'categories': list(coco_gt.dataset['categories']), 'annotations': []}
  with _quiet():
    empty.createIndex()
  return empty


def coco_table(ground_truth: GroundTruth, results: list[dict], iou_type: str,
               engine: str = 'faster_coco_eval', print_table: bool = False
               ) -> dict[str, Any]:
  """One COCOeval of `results` against `ground_truth`.

  Args:
    ground_truth: the split's GroundTruth.
    results: COCO results: {'image_id', 'category_id', 'score', 'bbox' [x, y, w, h]} or
      'segmentation' (RLE) for 'segm'.
    iou_type: 'bbox' or 'segm'.
    engine: 'faster_coco_eval' or 'pycocotools'.
    print_table: prints pycocotools' 12-line table.

  Returns:
    {STAT_NAMES...: float, 'per_category': {category_id: AP}} with pycocotools' values
    (0..1, -1 where undefined; per-category AP at area 'all', 100 detections).
  """
  if iou_type not in ('bbox', 'segm'):
    raise ValueError(f"iou_type must be 'bbox' or 'segm'; got {iou_type!r}")
  _, eval_class = _modules(engine)
  coco_gt = ground_truth.coco(engine)
  evaluator = eval_class(coco_gt, _load_results(engine, coco_gt, results), iou_type)
  with _quiet():
    evaluator.evaluate()
    evaluator.accumulate()
  with _quiet() as table:
    evaluator.summarize()
  if engine == 'faster_coco_eval':  # it logs its table; print it in pycocotools' words
    lines = _table_lines(evaluator.stats)
  else:
    lines = table.getvalue().rstrip('\n').splitlines()
  if print_table:
    print('\n'.join(lines))
  stats = dict(zip(STAT_NAMES, (float(s) for s in evaluator.stats[:12])))
  return dict(stats, per_category=per_category_ap(evaluator))


def per_category_ap(evaluator: Any) -> dict[int, float]:
  """{category id: AP@[.5:.95]} of an accumulated COCOeval (-1 where undefined)."""
  # precision: [iou thresholds, recall thresholds, categories, area ranges, max dets].
  precision = np.asarray(evaluator.eval['precision'])
  per_category = {}
  for k, category_id in enumerate(evaluator.params.catIds):
    p = precision[:, :, k, 0, -1]
    p = p[p > -1]
    per_category[int(category_id)] = float(p.mean()) if p.size else -1.0
  return per_category


_TABLE_ROWS = (  # (AP or AR, IoU, area, max dets) of each stat, as pycocotools prints
    (1, '0.50:0.95', 'all', 100), (1, '0.50', 'all', 100), (1, '0.75', 'all', 100),
    (1, '0.50:0.95', 'small', 100), (1, '0.50:0.95', 'medium', 100),
    (1, '0.50:0.95', 'large', 100), (0, '0.50:0.95', 'all', 1),
    (0, '0.50:0.95', 'all', 10), (0, '0.50:0.95', 'all', 100),
    (0, '0.50:0.95', 'small', 100), (0, '0.50:0.95', 'medium', 100),
    (0, '0.50:0.95', 'large', 100))


def _table_lines(stats: np.ndarray) -> list[str]:
  lines = []
  for (ap, iou, area, max_dets), value in zip(_TABLE_ROWS, stats):
    title, kind = ('Average Precision', '(AP)') if ap else ('Average Recall', '(AR)')
    lines.append(f' {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6s} | '
                 f'maxDets={max_dets:>3d} ] = {value:0.3f}')
  return lines


def read_results(path: str | os.PathLike, ground_truth: GroundTruth
                 ) -> tuple[str, list[dict]]:
  """A COCO results file (results_bbox.json / results_segm.json) -> (iou_type, results).

  The type is 'segm' when the entries carry a 'segmentation', else 'bbox'; an empty
  file takes it from its name. Entries are checked against `ground_truth` (known image
  and category ids, the fields COCOeval reads).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no results file {path}')
  try:
    with open(path) as f:
      results = json.load(f)
  except json.JSONDecodeError as error:
    raise ValueError(f'{path} is not JSON: {error}') from None
  if not isinstance(results, list):
    raise ValueError(f'{path}: a COCO results file is a list of detections; got '
                     f'{type(results).__name__}')
  if not results:
    name = os.path.basename(path)
    kinds = [t for t in ('bbox', 'segm') if t in name]
    if len(kinds) != 1:
      raise ValueError(f"{path} is empty and its name says neither 'bbox' nor 'segm'")
    return kinds[0], results
  iou_type = 'segm' if 'segmentation' in results[0] else 'bbox'
  category_ids = {int(c['id']) for c in ground_truth.dataset['categories']}
  for k, result in enumerate(results):
    if not isinstance(result, dict):
      raise ValueError(f'{path}: entry {k} is not a dict')
    for field in ('image_id', 'category_id', 'score',
                  'segmentation' if iou_type == 'segm' else 'bbox'):
      if field not in result:
        raise ValueError(f"{path}: entry {k} has no '{field}' (a {iou_type} results file)")
    if result['image_id'] not in ground_truth.images:
      raise ValueError(f'{path}: entry {k} has image_id {result["image_id"]}, which is not '
                       f'in the ground truth')
    if result['category_id'] not in category_ids:
      raise ValueError(f'{path}: entry {k} has category_id {result["category_id"]}, which '
                       f'is not in the ground truth')
  return iou_type, results
