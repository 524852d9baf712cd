"""Box and mask heads over pooled RoI features (torchvision's RoIHeads layers).

Parameter names follow torchvision's `maskrcnn_resnet50_fpn` state dict (`roi_heads.`
prefix). Dense kernels are PyTorch's [out, in] weights transposed to [in, out]; conv
kernels are [out, in, kh, kw] transposed to [kh, kw, in, out].

`BoxHead`:
  fc6/kernel, fc6/bias              <- box_head.fc6.weight, .bias
  fc7/kernel, fc7/bias              <- box_head.fc7.weight, .bias
  cls_score/kernel, cls_score/bias  <- box_predictor.cls_score.weight, .bias
  bbox_pred/kernel, bbox_pred/bias  <- box_predictor.bbox_pred.weight, .bias
  The pooled [R, S, S, C] features are flattened in PyTorch's (C, S, S) order, so fc6's
  kernel is torchvision's weight transposed, with no reordering of its input axis.

`MaskHead`:
  mask_fcn{i}/kernel, mask_fcn{i}/bias      <- mask_head.{i-1}.0.weight, .bias, i = 1..4
  conv5_mask/kernel, conv5_mask/bias        <- mask_predictor.conv5_mask.weight, .bias
  mask_fcn_logits/kernel, mask_fcn_logits/bias <- mask_predictor.mask_fcn_logits.weight, .bias
  conv5_mask is a Flax ConvTranspose with kernel [2, 2, in, out]: PyTorch's ConvTranspose2d
  weight [in, out, kh, kw] transposed to (kh, kw, in, out) AND flipped in both spatial
  axes (kernel = w.transpose(2, 3, 0, 1)[::-1, ::-1]).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class BoxHead(nn.Module):
  """RoI features -> two fc layers -> class logits and class-specific box deltas.

  Attributes:
    num_classes: K foreground classes (outputs have K + 1, index 0 background).
    fc_dim: width of fc6 and fc7.
    dtype: compute dtype; outputs are float32.
  """
  num_classes: int
  fc_dim: int = 1024
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pooled: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Args:
      pooled: [B, R, S, S, C] RoI features of the proposals (`poolers.RoIPooler`, S = 7).

    Returns:
      class_logits: [B, R, K + 1] float32.
      box_deltas: [B, R, K + 1, 4] float32, torchvision's (class, coordinate) layout.
    """
    batch, num_rois = pooled.shape[:2]
    # Flattened in PyTorch's (C, S, S) order.
    x = jnp.moveaxis(pooled, -1, 2).reshape(batch, num_rois, -1)
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    x = nn.relu(dense(self.fc_dim, name='fc6')(x))
    x = nn.relu(dense(self.fc_dim, name='fc7')(x))
    num_outputs = self.num_classes + 1
    class_logits = dense(num_outputs, kernel_init=nn.initializers.normal(stddev=0.01),
                         name='cls_score')(x)
    box_deltas = dense(num_outputs * 4, kernel_init=nn.initializers.normal(stddev=0.001),
                       name='bbox_pred')(x)
    return (class_logits.astype(jnp.float32),
            box_deltas.astype(jnp.float32).reshape(batch, num_rois, num_outputs, 4))


class Upsample2x(nn.Module):
  """A 2x2 stride-2 transposed convolution (`nn.ConvTranspose`, padding 'VALID') as one einsum.

  Each input cell writes a 2x2 block of the output, so the layer is a matmul onto the four
  output phases followed by a reshape. Same parameters (`kernel` [2, 2, in, out],
  `bias` [out]) and outputs as nn.ConvTranspose; written this way because XLA:CPU
  computes nn.ConvTranspose's gradient about 30x slower than a 3x3 conv's.

  Attributes:
    features: output channels.
    kernel_init: initializer of the [2, 2, in, out] kernel.
    dtype: compute dtype.
  """
  features: int
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [N, H, W, C] -> [N, 2H, 2W, features]."""
    kernel = self.param('kernel', self.kernel_init, (2, 2, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    # nn.ConvTranspose (transpose_kernel=False) applies the kernel flipped in space.
    kernel = kernel[::-1, ::-1].astype(self.dtype)
    y = jnp.einsum('nhwc,ijcd->nhiwjd', x.astype(self.dtype), kernel)
    n, h, _, w, _, d = y.shape
    return y.reshape(n, 2 * h, 2 * w, d) + bias.astype(self.dtype)


class MaskHead(nn.Module):
  """RoI features -> 4 x (3x3 conv + ReLU) -> 2x upsampling deconv -> mask logits.

  Attributes:
    num_classes: K foreground classes; K + 1 output channels (index 0 background) unless
      `class_agnostic`, then one.
    conv_dim: channels of the convs and the deconv.
    num_convs: number of 3x3 convs.
    class_agnostic: one mask channel for all classes.
    dtype: compute dtype; outputs are float32.
  """
  num_classes: int
  conv_dim: int = 256
  num_convs: int = 4
  class_agnostic: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pooled: jax.Array) -> jax.Array:
    """Args:
      pooled: [B, R, S, S, C] RoI features (`poolers.RoIPooler`, S = 14).

    Returns:
      mask_logits: [B, R, 2S, 2S, K + 1 (or 1 if class_agnostic)] float32.
    """
    batch, num_rois = pooled.shape[:2]
    x = pooled.reshape(batch * num_rois, *pooled.shape[2:])
    init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')  # as torchvision
    for i in range(1, self.num_convs + 1):
      x = nn.relu(nn.Conv(self.conv_dim, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                          kernel_init=init, name=f'mask_fcn{i}')(x))
    x = nn.relu(Upsample2x(self.conv_dim, kernel_init=init, dtype=self.dtype,
                           name='conv5_mask')(x))
    num_outputs = 1 if self.class_agnostic else self.num_classes + 1
    x = nn.Conv(num_outputs, (1, 1), dtype=self.dtype, kernel_init=init,
                name='mask_fcn_logits')(x)
    return x.astype(jnp.float32).reshape(batch, num_rois, *x.shape[1:])
