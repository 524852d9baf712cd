"""Times maskrcnn_jax.ops.nms against its previous early-exit form (benchmarks/nms.py).

  python scripts/bench_nms.py [repeats]

Prints the median (min-max) milliseconds per case; also `scripts/benchmark.py --mode nms`.
"""

import os
import sys

# benchmarks/ lives beside scripts/, outside the installed package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import nms  # pylint: disable=wrong-import-position

if __name__ == '__main__':
  nms.main()
