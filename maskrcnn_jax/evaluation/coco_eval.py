"""The COCOeval engine: faster-coco-eval (C++) by default, pycocotools as the reference.

`coco_table(ground_truth, results, iou_type, engine)` runs one COCOeval ('bbox' or
'segm') and returns its 12 numbers and per-category APs. Both engines read the same
ground-truth dict (a COCO annotation file's content) and the same results; faster-coco-eval
is a C++ port of pycocotools' evaluateImg/accumulate and gives the same tables
(tests/evaluation/test_coco_eval.py compares all 12 numbers for equality on the real COCO slice and
on synthetic cases). Config key: `eval.engine`.

`coco_tables` runs the bbox and segm evaluations at once, one in this process and the
other in a spawned process (`eval.coco_eval_workers`; `worker_processes.process_pool`); the
child gets the ground-truth dict and the results as columns (`result_columns`: a few
arrays and the RLE strings, cheaper to pickle than 500,000 dicts). The tables are those
of the sequential path. faster-coco-eval's results are built from the columns with one
batched area / toBbox call (`_faster_results`), where its `loadRes` makes two per
result, and Python's cycle collector is paused during an evaluation: it would walk the
millions of result objects over and over, and nothing made there holds a cycle (10-15%
of the CPU time).

Each table prints once, in pycocotools' words, followed by its per-category APs
(`per_category_lines`, a few columns of 'name AP' as Detectron2 prints them):
faster-coco-eval's own log lines (its table and progress, through `logging`) are
silenced in every process. `read_results` reads a results file as written by any tool:
segmentations as polygons, uncompressed or compressed RLE.
"""

import contextlib
import copy
import gc
import io
import json
import os
from typing import Any

import numpy as np

from maskrcnn_jax.data import mask_decoding
from maskrcnn_jax.evaluation import worker_processes

ENGINES = ('faster_coco_eval', 'pycocotools')
# COCOeval.stats, in order.
STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
              'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')
IOU_TYPES = ('bbox', 'segm')
# Below this many results in all, a spawned process (~0.5 s to start, then the ground
# truth to send and index) costs more than evaluating one after the other saves.
MIN_CONCURRENT_RESULTS = 20_000


def quiet():
  """Silences the engines' progress prints ('loading annotations...', 'DONE (t=0.1s)')."""
  return contextlib.redirect_stdout(io.StringIO())


@contextlib.contextmanager
def _no_cycle_collection():
  """Pauses Python's cyclic garbage collector (reference counting still frees)."""
  enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if enabled:
      gc.enable()


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
      self._indexed[engine] = _indexed_coco(engine, copy.deepcopy(self.dataset))
    return self._indexed[engine]


def _indexed_coco(engine: str, dataset: dict[str, Any]) -> Any:
  """`engine`'s COCO object holding `dataset` (not copied), indexed."""
  coco_class, _ = _modules(engine)
  coco = coco_class()
  if engine == 'faster_coco_eval':
    coco.print_function = _ignore  # it logs 'creating index...' through `logging`
  coco.dataset = dataset
  with quiet():
    coco.createIndex()
  return coco


def result_columns(results: list[dict], iou_type: str) -> dict[str, Any]:
  """COCO results -> columns: 'image_id' [n] int64, 'category_id' [n] int64, 'score' [n]
  float64, and 'bbox' [n, 4] float64 xywh ('bbox') or 'size' [n, 2] int64 and 'counts'
  [n] str, the compressed RLE ('segm'). The values are the results' own (exact).

  A segm result's 'bbox', if any, is dropped: its area ranges are the mask's area (as
  Detectron2 evaluates masks). Polygons and uncompressed RLE are refused here;
  `read_results` (or `compressed_segmentation`) converts them.
  """
  columns = {'image_id': np.array([r['image_id'] for r in results], np.int64),
             'category_id': np.array([r['category_id'] for r in results], np.int64),
             'score': np.array([r['score'] for r in results], np.float64)}
  if iou_type == 'bbox':
    columns['bbox'] = np.array([r['bbox'] for r in results], np.float64).reshape(-1, 4)
    return columns
  for k, result in enumerate(results):
    segmentation = result['segmentation']
    if not (isinstance(segmentation, dict)
            and isinstance(segmentation.get('counts'), (str, bytes))):
      raise ValueError(f'segm result {k}: its segmentation is not compressed RLE '
                       "({'size', 'counts': str}); coco_eval.read_results converts polygons "
                       'and uncompressed RLE')
  columns['size'] = np.array([r['segmentation']['size'] for r in results],
                             np.int64).reshape(-1, 2)
  columns['counts'] = [r['segmentation']['counts'] for r in results]
  return columns


def compressed_segmentation(segmentation: Any, height: int, width: int) -> dict[str, Any]:
  """A result's segmentation as compressed RLE {'size': [h, w], 'counts': str}, as
  pycocotools' `annToRLE` makes it: polygons merged into one mask of the image's size,
  uncompressed RLE (counts a list) compressed; compressed RLE is returned as it is.

  Raises:
    ValueError: malformed (mask_decoding.segmentation_to_rle's checks), or an RLE whose
      size is not the image's.
  """
  if isinstance(segmentation, dict) and isinstance(segmentation.get('counts'), str):
    size = segmentation.get('size')
    if not isinstance(size, (list, tuple)) or [int(s) for s in size] != [height, width]:
      raise ValueError(f'RLE size {size} does not match the image size {[height, width]}')
    return segmentation
  rle = mask_decoding.segmentation_to_rle(segmentation, height, width)
  return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}


def _result_dicts(columns: dict[str, Any]) -> list[dict]:
  """`result_columns` -> COCO result dicts again."""
  commons = [{'image_id': i, 'category_id': c, 'score': s} for i, c, s in zip(
      columns['image_id'].tolist(), columns['category_id'].tolist(),
      columns['score'].tolist())]
  if 'bbox' in columns:
    return [dict(common, bbox=box) for common, box in zip(commons, columns['bbox'].tolist())]
  return [dict(common, segmentation={'size': size, 'counts': counts}) for common, size, counts
          in zip(commons, columns['size'].tolist(), columns['counts'])]


def _faster_results(coco_gt: Any, columns: dict[str, Any]) -> Any:
  """faster-coco-eval's `coco_gt.loadRes` of the results in `columns`: the same
  annotations (area w * h, or the mask's area and box; id 1..n; iscrowd 0), built with
  one area / toBbox call for all masks instead of two per result."""
  from faster_coco_eval.core import mask as mask_api  # pylint: disable=import-outside-toplevel
  if not set(np.unique(columns['image_id']).tolist()) <= set(coco_gt.imgs):
    raise ValueError('results hold image ids that are not in the ground truth')
  annotations = _result_dicts(columns)
  if 'bbox' in columns:
    boxes = columns['bbox']
    areas = (boxes[:, 2] * boxes[:, 3]).tolist()
    for k, (annotation, area) in enumerate(zip(annotations, areas)):
      annotation.update(area=area, id=k + 1, iscrowd=0)
  elif annotations:
    masks = [a['segmentation'] for a in annotations]
    areas, boxes = mask_api.area(masks).tolist(), mask_api.toBbox(masks).tolist()
    for k, (annotation, area, box) in enumerate(zip(annotations, areas, boxes)):
      annotation.update(area=area, bbox=box, id=k + 1, iscrowd=0)
  return _indexed_coco('faster_coco_eval', {
      'info': copy.deepcopy(coco_gt.dataset.get('info', {})),
      'images': list(coco_gt.dataset['images']),
      'categories': copy.deepcopy(coco_gt.dataset['categories']),
      'annotations': annotations})


def _load_results(engine: str, coco_gt: Any, columns: dict[str, Any]) -> Any:
  """The result set of `columns` for `engine`: `_faster_results`, or pycocotools'
  `loadRes`; no results give an empty result set."""
  if engine == 'faster_coco_eval':
    return _faster_results(coco_gt, columns)
  if len(columns['score']):
    with quiet():
      return coco_gt.loadRes(_result_dicts(columns))
  return _indexed_coco(engine, {'images': list(coco_gt.dataset['images']),
                                'categories': list(coco_gt.dataset['categories']),
                                'annotations': []})


def coco_table(ground_truth: GroundTruth, results: list[dict], iou_type: str,
               engine: str = 'faster_coco_eval', print_table: bool = False
               ) -> dict[str, Any]:
  """One COCOeval of `results` against `ground_truth`.

  Args:
    ground_truth: the split's GroundTruth.
    results: COCO results: {'image_id', 'category_id', 'score', 'bbox' [x, y, w, h]} or
      'segmentation' (RLE) for 'segm'; not modified.
    iou_type: 'bbox' or 'segm'.
    engine: 'faster_coco_eval' or 'pycocotools'.
    print_table: prints pycocotools' 12-line table, then the per-category APs.

  Returns:
    {STAT_NAMES...: float, 'per_category': {category_id: AP}} with pycocotools' values
    (0..1, -1 where undefined; per-category AP at area 'all', 100 detections).
  """
  _check(iou_type, engine)
  table, lines = _evaluate(ground_truth.coco(engine), result_columns(results, iou_type),
                           iou_type, engine)
  if print_table:
    print('\n'.join(lines + per_category_lines(iou_type, table['per_category'],
                                               ground_truth.dataset['categories'])))
  return table


def coco_tables(ground_truth: GroundTruth, results: dict[str, list[dict]],
                engine: str = 'faster_coco_eval', processes: int = 1,
                print_tables: bool = False,
                min_results: int = MIN_CONCURRENT_RESULTS) -> dict[str, dict[str, Any]]:
  """`coco_table` of each iou type of `results` ({'bbox': [...], 'segm': [...]}), up to
  `processes` at once: the first type in this process, the others in spawned processes
  (only with at least `min_results` results in all). The tables are the sequential
  ones; `print_tables` prints each (and its per-category APs) after all are done, in
  `results`' order."""
  for iou_type in results:
    _check(iou_type, engine)
  processes = min(processes, len(results))
  if sum(len(r) for r in results.values()) < min_results:
    processes = 1
  columns = {iou_type: result_columns(r, iou_type) for iou_type, r in results.items()}
  first, *others = columns
  if processes <= 1:
    evaluated = {t: _evaluate(ground_truth.coco(engine), c, t, engine)
                 for t, c in columns.items()}
  else:
    with worker_processes.process_pool(processes - 1) as pool:
      futures = {t: pool.submit(_evaluate_in_process, ground_truth.dataset, columns[t], t,
                                engine) for t in others}
      evaluated = {first: _evaluate(ground_truth.coco(engine), columns[first], first,
                                    engine)}
      evaluated.update({t: future.result() for t, future in futures.items()})
  if print_tables:
    for iou_type in results:
      table, lines = evaluated[iou_type]
      print(f'COCO {iou_type}: {len(results[iou_type])} results')
      print('\n'.join(lines + per_category_lines(iou_type, table['per_category'],
                                                 ground_truth.dataset['categories'])))
  return {iou_type: evaluated[iou_type][0] for iou_type in results}


def num_processes(requested: int, num_iou_types: int = len(IOU_TYPES)) -> int:
  """`eval.coco_eval_workers`: -1 -> one per iou type, at most one per core; n >= 1 ->
  n (1: one evaluation after the other)."""
  if requested == 0 or requested < -1:
    raise ValueError(f'config.eval.coco_eval_workers must be -1 or positive; got {requested}')
  return min(num_iou_types, os.cpu_count() or 1) if requested == -1 else requested


def _check(iou_type: str, engine: str) -> None:
  if iou_type not in IOU_TYPES:
    raise ValueError(f"iou_type must be 'bbox' or 'segm'; got {iou_type!r}")
  _modules(engine)


def _evaluate_in_process(dataset: dict[str, Any], columns: dict[str, Any], iou_type: str,
                         engine: str) -> tuple[dict[str, Any], list[str]]:
  """`_evaluate` in a spawned process: `dataset` is this process's own copy."""
  return _evaluate(_indexed_coco(engine, dataset), columns, iou_type, engine)


def _evaluate(coco_gt: Any, columns: dict[str, Any], iou_type: str, engine: str
              ) -> tuple[dict[str, Any], list[str]]:
  """One COCOeval: (`coco_table`'s table, pycocotools' 12 table lines)."""
  _, eval_class = _modules(engine)
  with _no_cycle_collection():
    evaluator = eval_class(coco_gt, _load_results(engine, coco_gt, columns), iou_type)
    if engine == 'faster_coco_eval':
      # It logs its progress and table through `logging` (absl's handler in a script):
      # the table would print twice.
      evaluator.print_function = _ignore
    with quiet():
      evaluator.evaluate()
      evaluator.accumulate()
    with quiet() as table:
      evaluator.summarize()
  if engine == 'faster_coco_eval':  # it logs its table; print it in pycocotools' words
    lines = _table_lines(evaluator.stats)
  else:
    lines = table.getvalue().rstrip('\n').splitlines()
  stats = dict(zip(STAT_NAMES, (float(s) for s in evaluator.stats[:12])))
  return dict(stats, per_category=per_category_ap(evaluator)), lines


def _ignore(*args, **kwargs) -> None:
  del args, kwargs


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


def per_category_lines(iou_type: str, per_category: dict[int, float],
                       categories: list[dict], columns: int = 3) -> list[str]:
  """The per-category APs in `columns` columns of 'name AP' (AP in percent, '-' where
  undefined: no ground truth), after a title; Detectron2 prints this table.

  Args:
    iou_type: 'bbox', 'segm' or 'keypoints', for the title.
    per_category: {category id: AP 0..1, -1 where undefined} (`per_category_ap`).
    categories: the ground truth's 'categories' (their 'name' labels the ids).
  """
  names = {int(c['id']): str(c.get('name', c['id'])) for c in categories}
  cells = [(names.get(int(c), str(c))[:24], '-' if ap < 0 else f'{100 * ap:.1f}')
           for c, ap in per_category.items()]
  if not cells:
    return []
  name_width = max(len(name) for name, _ in cells)
  cells = [f'{name:<{name_width}} {ap:>5}' for name, ap in cells]
  return [f'per-category {iou_type} AP:'] + [
      '  ' + '   '.join(cells[i:i + columns]) for i in range(0, len(cells), columns)]


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
  and category ids, the fields COCOeval reads). Segmentations may be polygons,
  uncompressed RLE or compressed RLE (counts a str): the returned results hold
  compressed RLE (`compressed_segmentation`, as pycocotools converts them), so that
  the tables are pycocotools' own for the file.
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
    if iou_type == 'segm':
      image = ground_truth.images[result['image_id']]
      try:
        segmentation = compressed_segmentation(result['segmentation'], int(image['height']),
                                               int(image['width']))
      except (ValueError, TypeError) as error:
        raise ValueError(f'{path}: entry {k} (image_id {result["image_id"]}): {error}'
                         ) from None
      if segmentation is not result['segmentation']:
        results[k] = dict(result, segmentation=segmentation)
  return iou_type, results
