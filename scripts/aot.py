"""Compiles a config's programs ahead of time for TPU, on a machine without one.

  JAX_PLATFORMS=cpu python scripts/aot.py --config configs/maskrcnn_r50_fpn_1x.py \
      --program train,infer --chip v5e --batch 2,8 --dtype bfloat16 --output aot.jsonl

Needs libtpu (`pip install -e '.[tpu]'`); benchmarks/tpu_aot.py describes the programs,
the measurements and the columns.
"""

import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # the host backend; TPU only compiles
# benchmarks/ lives beside scripts/, outside the installed package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import tpu_aot  # pylint: disable=wrong-import-position

if __name__ == '__main__':
  tpu_aot.main()
