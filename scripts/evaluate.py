r"""COCO box and mask AP of a checkpoint on the config's val split.

  python scripts/evaluate.py --config configs/maskrcnn_r50_fpn_1x.py \
      --checkpoint runs/r50/checkpoints --workdir runs/r50/eval \
      --config.eval.batch_size=16

`--checkpoint` is a `save_variables` directory (e.g. converted weights), a training
checkpoint directory (its newest step) or one step of it. `model.num_classes` must be
the val split's number of categories (or its largest category id, for torchvision's
COCO models whose labels are category ids). Prints both COCO tables and writes
results_bbox.json, results_segm.json and metrics.json into --workdir. Multi-host runs
start jax.distributed from the cluster environment or the explicit flags.
"""

import json

from absl import app
from absl import flags
from ml_collections import config_flags

import distributed_flags
from maskrcnn_jax import checkpoint
from maskrcnn_jax import cli
from maskrcnn_jax import evaluate
from maskrcnn_jax import parallel
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import pipeline

_CONFIG = config_flags.DEFINE_config_file('config', None, 'a configs/*.py file')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'orbax checkpoint directory')
_WORKDIR = flags.DEFINE_string('workdir', None, 'where the results and metrics go')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if config is None or not _CHECKPOINT.value or not _WORKDIR.value:
    raise app.UsageError('--config, --checkpoint and --workdir are required')
  distributed_flags.initialize()
  dataset = pipeline.load_split(config.data, 'val')
  coco.check_num_classes(config.model.num_classes, dataset.category_ids,
                         dataset.annotation_file, labels_may_be_ids=True)
  coco.check_evaluation_fields(dataset.annotation_file)
  variables = checkpoint.load_variables(_CHECKPOINT.value)
  evaluator = evaluate.Evaluator(config, dataset, parallel.data_mesh())
  metrics = evaluator(variables, workdir=_WORKDIR.value)
  print(json.dumps(evaluate.flat_metrics(metrics), indent=1))


if __name__ == '__main__':
  cli.run(main)
