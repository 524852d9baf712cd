"""Ablation: RoIAlign with 1 x 1 sample points per bin instead of 2 x 2.

The base is the name of a configs/ file (default maskrcnn_r50_fpn_1x), given after a
colon on the command line: --config=configs/ablations/sampling_ratio_1.py:shapes_demo
"""

import pathlib

from maskrcnn_jax import config as config_lib

_CONFIGS = pathlib.Path(__file__).resolve().parents[1]


def get_config(base: str = 'maskrcnn_r50_fpn_1x'):
  c = config_lib.load_config_file(_CONFIGS / f'{base}.py')
  c.model.roi_align.sampling_ratio = 1
  return c
