"""Keypoint head over pooled RoI features (the paper's section 5; Keypoint R-CNN).

One heatmap per keypoint over each RoI: 8 x (3x3 conv, 512, ReLU) on 14 x 14 RoIAlign
features, a 4x4 stride-2 transposed conv to K channels (28 x 28) and 2x bilinear
upsampling to 56 x 56 logits, as torchvision's `KeypointRCNNHeads` +
`KeypointRCNNPredictor` and Detectron2's `KRCNNConvDeconvUpsampleHead` build it.

Parameter names and the torchvision `keypointrcnn_resnet50_fpn` keys they convert from
(`roi_heads.` prefix; convert.keypoint_head_table):
  keypoint_fcn{i}/kernel, /bias     <- keypoint_head.{2 (i - 1)}.weight, .bias, i = 1..8
  kps_score_lowres/kernel, /bias    <- keypoint_predictor.kps_score_lowres.weight, .bias
  kps_score_lowres is a Flax ConvTranspose: PyTorch's [in, out, 4, 4] weight transposed
  to (kh, kw, in, out) and flipped in both spatial axes (convert.deconv_kernel).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def upsample_bilinear_2x(x: jax.Array) -> jax.Array:
  """[N, H, W, C] -> [N, 2H, 2W, C]: `F.interpolate(scale_factor=2, mode='bilinear')`.

  Half-pixel centers (align_corners=False): output 2i reads input i - 1/4 and 2i + 1
  reads i + 1/4, i.e. weights (1/4, 3/4) and (3/4, 1/4) on neighbours, the edge row
  repeated outside the input (PyTorch clamps the source index there).
  """
  def along(x, axis):
    size = x.shape[axis]
    first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
    last = jax.lax.slice_in_dim(x, size - 1, size, axis=axis)
    previous = jnp.concatenate([first, jax.lax.slice_in_dim(x, 0, size - 1, axis=axis)], axis)
    following = jnp.concatenate([jax.lax.slice_in_dim(x, 1, size, axis=axis), last], axis)
    even = 0.25 * previous + 0.75 * x
    odd = 0.75 * x + 0.25 * following
    interleaved = jnp.stack([even, odd], axis=axis + 1)
    shape = list(x.shape)
    shape[axis] = 2 * size
    return interleaved.reshape(shape)

  return along(along(x, 1), 2)


class KeypointHead(nn.Module):
  """RoI features -> per-keypoint heatmap logits.

  Attributes:
    num_keypoints: K.
    conv_dim: channels of the 3x3 convs (512).
    num_convs: number of 3x3 convs (8).
    dtype: compute dtype; outputs are float32.
  """
  num_keypoints: int
  conv_dim: int = 512
  num_convs: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pooled: jax.Array) -> jax.Array:
    """Args:
      pooled: [B, R, S, S, C] RoI features (`poolers.RoIPooler`, S = 14).

    Returns:
      heatmap logits: [B, R, 4S, 4S, K] float32.
    """
    batch, num_rois = pooled.shape[:2]
    x = pooled.reshape(batch * num_rois, *pooled.shape[2:])
    init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')  # as torchvision
    for i in range(1, self.num_convs + 1):
      x = nn.relu(nn.Conv(self.conv_dim, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                          kernel_init=init, name=f'keypoint_fcn{i}')(x))
    # PyTorch's ConvTranspose2d(4, stride 2, padding 1): the dilated input padded by
    # 4 - 1 - 1 = 2 on each side, so the output is exactly twice the input.
    x = nn.ConvTranspose(self.num_keypoints, (4, 4), strides=(2, 2),
                         padding=((2, 2), (2, 2)), dtype=self.dtype, kernel_init=init,
                         name='kps_score_lowres')(x)
    x = upsample_bilinear_2x(x.astype(jnp.float32))
    return x.reshape(batch, num_rois, *x.shape[1:])
