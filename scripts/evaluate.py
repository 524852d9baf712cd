r"""COCO box and mask AP of a checkpoint on the config's val split, or of results files.

  python scripts/evaluate.py --checkpoint runs/r50 --workdir runs/r50/eval \
      --config.eval.batch_size=16

  python scripts/evaluate.py --config configs/torchvision_r50_fpn.py \
      --checkpoint weights/torchvision_r50 --workdir eval_tv

  python scripts/evaluate.py --results runs/r50/eval/results_bbox.json \
      runs/r50/eval/results_segm.json --annotations instances_val2017.json

`--checkpoint` is a training run's workdir, its checkpoints folder (the newest step) or
one step of it, or a `save_variables` directory (e.g. converted weights). A training
run's checkpoint brings the config the run saved (<workdir>/config.json): --config is
then optional, `--config.<key>=<value>` overrides apply on top of the saved config, and
a --config given replaces it (a note names the keys where they differ). Converted
weights need --config. `model.num_classes` must be the val split's number of categories
(or its largest category id, for torchvision's COCO models whose labels are category
ids); a checkpoint whose variables do not fit the config's model is refused before
anything is compiled. Prints both COCO tables and writes results_bbox.json,
results_segm.json and metrics.json (naming the checkpoint and its step) into --workdir,
checked writable first. Multi-host runs start jax.distributed from the cluster
environment or the explicit flags.

`--results` evaluates existing COCO results files with no model: each file's type
(bbox or segm) is read from its entries (segmentations as polygons or RLE); the ground
truth is `--annotations` or the val split of `--config` (or of
--config.data.val_annotations / val_images). With --workdir, metrics.json goes there.
"""

import json
import os

from absl import app
from absl import flags
import jax

import distributed_flags
from maskrcnn_jax import checkpoint
from maskrcnn_jax import cli
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.evaluation import coco_eval
from maskrcnn_jax.evaluation import evaluator as evaluator_lib
from maskrcnn_jax.evaluation import metrics as metrics_lib
from maskrcnn_jax.inference import predictor
from maskrcnn_jax.runtime import distributed
from maskrcnn_jax.train import preflight

_CONFIG = cli.define_config_flag()
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'a checkpoint directory (see above)')
_WORKDIR = flags.DEFINE_string('workdir', None, 'where the results and metrics go')
_RESULTS = flags.DEFINE_string(
    'results', None, 'a COCO results file to evaluate without a model; more files may '
    'follow it as arguments (--results results_bbox.json results_segm.json)')
_ANNOTATIONS = flags.DEFINE_string(
    'annotations', None, 'the ground-truth COCO annotation file for --results (default: '
    "the config's val split)")
_ENGINE = flags.DEFINE_enum('engine', None, list(coco_eval.ENGINES),
                            'COCOeval engine for --results (default: eval.engine)')


def evaluate_results_files(paths: list[str]) -> None:
  config = _CONFIG.value if cli.config_given() else None
  engine = _ENGINE.value or (config.eval.engine if config is not None else
                             'faster_coco_eval')
  if _WORKDIR.value:
    preflight.check_writable(_WORKDIR.value, '--workdir')
  if _ANNOTATIONS.value:
    ground_truth = coco_eval.GroundTruth.from_file(_ANNOTATIONS.value)
  elif config is not None:
    ground_truth = metrics_lib.ground_truth(pipeline.load_split(config.data, 'val'))
  else:
    raise app.UsageError('--results needs --annotations or --config (its val split)')
  names = {int(c['id']): c.get('name', str(c['id']))
           for c in ground_truth.dataset['categories']}
  metrics = {}
  for path in paths:
    iou_type, results = coco_eval.read_results(path, ground_truth)
    if iou_type in metrics:
      raise ValueError(f'{path}: a second {iou_type} results file')
    print(f'COCO {iou_type}: {len(results)} results from {path}')
    table = coco_eval.coco_table(ground_truth, results, iou_type, engine, print_table=True)
    table['per_category'] = {names[c]: ap for c, ap in table['per_category'].items()}
    metrics[iou_type] = table
  metrics.update(results_files=[os.path.abspath(p) for p in paths], engine=engine,
                 checkpoint=None, step=None)
  if _WORKDIR.value:
    metrics_lib.write_metrics(_WORKDIR.value, metrics)
  print(json.dumps(metrics_lib.flat_metrics(metrics), indent=1))


def main(argv):
  if _RESULTS.value:
    evaluate_results_files([_RESULTS.value] + list(argv[1:]))
    return
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _CHECKPOINT.value or not _WORKDIR.value:
    raise app.UsageError('--checkpoint and --workdir are required (or --results)')
  config = cli.run_config(_CHECKPOINT.value)
  preflight.check_canvases(config)
  preflight.check_writable(_WORKDIR.value, '--workdir')  # before hours of inference
  distributed_flags.initialize()
  preflight.check_eval_batch(config, jax.device_count())
  dataset = pipeline.load_split(config.data, 'val')
  coco.check_num_classes(config.model.num_classes, dataset.category_ids,
                         dataset.annotation_file, labels_may_be_ids=True)
  coco.check_evaluation_fields(dataset.annotation_file)
  coco.check_masks(dataset, config.model.mask_head.enabled)
  item, step = checkpoint.variables_item(_CHECKPOINT.value)
  variables = checkpoint.load_variables(item)
  predictor.check_variables(config, variables, _CHECKPOINT.value)
  evaluator = evaluator_lib.Evaluator(config, dataset, distributed.data_mesh())
  metrics = evaluator(variables, workdir=_WORKDIR.value,
                      checkpoint=os.path.abspath(_CHECKPOINT.value), step=step)
  print(json.dumps(metrics_lib.flat_metrics(metrics), indent=1))


if __name__ == '__main__':
  cli.run(main)
