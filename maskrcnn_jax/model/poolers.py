"""The RoI pooler: each box's features from its FPN level, pooled to S x S for one head.

As Detectron2's ROIPooler and torchvision's MultiScaleRoIAlign, the pooler owns the
level assignment (FPN paper eq. 1, `ops.roi_levels.assign_levels`) and every pooling
setting; the heads receive pooled features and know nothing of how they were pooled.
`MaskRCNN` builds one per head from the config (`from_config`). Two heads whose poolers
are equal pool the same boxes once.
"""

import dataclasses
from typing import Sequence

import jax
import ml_collections

from maskrcnn_jax.ops import roi_align
from maskrcnn_jax.ops import roi_pool

OPS = ('align', 'pool')


@dataclasses.dataclass(frozen=True)
class RoIPooler:
  """RoIAlign or RoIPool from the level each box is assigned to.

  Attributes:
    output_size: S, bins per side.
    op: 'align' (RoIAlign) | 'pool' (RoIPool).
    sampling_ratio: RoIAlign samples per bin side, 0 adaptive (`ops.roi_align.roi_align`).
    aligned: RoIAlign's half-pixel offset.
    max_sampling_ratio: the adaptive grid's cap (sampling_ratio 0 only).
    max_bin_cells: RoIPool's static window side per bin.
    min_level: the level of the first feature map (P2: 2).
    sum_in_loop: RoIAlign's form under differentiation (`ops.roi_align`); the same
      values either way.
  """
  output_size: int
  op: str = 'align'
  sampling_ratio: int = 2
  aligned: bool = True
  max_sampling_ratio: int = 0
  max_bin_cells: int = 8
  min_level: int = 2
  sum_in_loop: bool = False

  def __post_init__(self):
    if self.op not in OPS:
      raise ValueError(f'unknown roi_op {self.op!r}; expected one of {OPS}')

  @classmethod
  def from_config(cls, model_config: ml_collections.ConfigDict, output_size: int,
                  sum_in_loop: bool = False) -> 'RoIPooler':
    """The pooler of `config.model`'s RoI settings at output size S."""
    c = model_config
    return cls(output_size, op=c.roi_op, sampling_ratio=c.roi_align.sampling_ratio,
               aligned=c.roi_align.aligned, max_sampling_ratio=c.roi_align.max_sampling_ratio,
               max_bin_cells=c.roi_pool.max_bin_cells, sum_in_loop=sum_in_loop)

  def __call__(self, features: Sequence[jax.Array], boxes: jax.Array) -> jax.Array:
    """Args:
      features: per level [B, H_l, W_l, C], levels min_level.. (stride 2**l).
      boxes: [B, R, 4] float32 x1y1x2y2 pixels.

    Returns:
      [B, R, S, S, C] in the features' dtype.
    """
    with jax.named_scope('pool_rois'):  # names the gathers in profiles
      if self.op == 'align':
        return roi_align.multilevel_roi_align(
            features, boxes, self.output_size, self.sampling_ratio, self.aligned,
            min_level=self.min_level, max_sampling_ratio=self.max_sampling_ratio,
            sum_in_loop=self.sum_in_loop)
      return roi_pool.multilevel_roi_pool(features, boxes, self.output_size,
                                          self.max_bin_cells, min_level=self.min_level)
