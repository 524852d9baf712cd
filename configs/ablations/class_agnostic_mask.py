"""Ablation: one mask per RoI instead of one per class (Mask R-CNN paper,
Table 2c).

The base is the name of a configs/ file (default maskrcnn_r50_fpn_1x), given after a
colon on the command line: --config=configs/ablations/class_agnostic_mask.py:shapes_demo
"""

import pathlib

from maskrcnn_jax import config as config_lib

_CONFIGS = pathlib.Path(__file__).resolve().parents[1]


def get_config(base: str = 'maskrcnn_r50_fpn_1x'):
  c = config_lib.load_config_file(_CONFIGS / f'{base}.py')
  c.model.class_agnostic_mask = True
  return c
