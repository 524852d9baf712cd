r"""Trains Mask R-CNN; run it again with the same --workdir to resume.

  python scripts/train.py --config configs/maskrcnn_r50_fpn_1x.py --workdir runs/r50_1x \
      --config.train.batch_size=8 --config.train.base_lr=0.01

Any config key can be overridden with --config.<key>=<value>; an unknown key is an
error. The run's config is saved as <workdir>/config.json: resuming with other values
(train.num_steps, paths and a few more excepted) is refused. Multi-host: one process per
host, see distributed_flags.py and the README.

Ctrl-C (SIGINT) or SIGTERM saves a checkpoint of the step in flight, then exits with
status 130 or 143 and one line saying where it stopped; a second Ctrl-C stops at once.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

import distributed_flags
from maskrcnn_jax import cli
from maskrcnn_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file('config', None, 'config file', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'checkpoints, TensorBoard and eval outputs')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  distributed_flags.initialize()
  try:
    result = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except loop.Interrupted as stopped:
    print(f'{os.path.basename(sys.argv[0])}: {stopped}', file=sys.stderr)
    sys.exit(stopped.exit_status)
  metrics = result['eval']
  if metrics:
    print(f'step {result["step"]}: bbox AP {metrics["bbox"]["AP"]:.4f}, '
          f'segm AP {metrics["segm"]["AP"]:.4f}')


if __name__ == '__main__':
  cli.run(main)
