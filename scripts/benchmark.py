"""Times a config's train step, inference or input pipeline, optionally beside torchvision.

  python scripts/benchmark.py --config configs/maskrcnn_r50_fpn_1x.py --mode train \
      --batch 1,8 --dtype bfloat16,float32 --image-size 512x512 --steps 5 --warmup 1 \
      --compare torchvision --peak-tflops 990 --output bench.json --markdown docs/benchmarks.md

Modes train, infer, input, eval, serving and nms; `--help` lists the flags and
benchmarks/main.py describes each mode.
"""

import os
import sys

# benchmarks/ lives beside scripts/, outside the installed package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import main as benchmarks_main  # pylint: disable=wrong-import-position

if __name__ == '__main__':
  benchmarks_main.main()
