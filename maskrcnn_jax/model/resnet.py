"""ResNet-18/34/50/101 and ResNeXt body returning C2..C5 (strides 4, 8, 16, 32) for the FPN.

Layout and names follow torchvision's ResNet (v1.5: a bottleneck's stride sits on its 3x3
conv; `stride_in_1x1=True` moves it to the first 1x1 conv, as MSRA's original and
Detectron2's). ResNeXt (Xie et al. 2017) splits each bottleneck's 3x3 conv into `groups`
groups of `width_per_group` channels (at base width 64; torchvision's and Detectron2's
resnext101_32x8d / X101: 32 x 8). Parameter tree, with the torchvision state dict keys it converts from
(see convert.py):

  stem/conv1, stem/bn1                        <- conv1, bn1
  res{s}/block{b}/conv{k}, .../bn{k}          <- layer{s-1}.{b}.conv{k}, .bn{k}
  res{s}/block0/downsample_conv, downsample_bn <- layer{s-1}.0.downsample.0, .1

Conv kernels are [kh, kw, in, out] in 'params' (no biases). With norm='frozen_bn' each
bn* keeps `scale`, `bias`, `mean`, `var` in 'batch_stats'; with norm='group_norm' the
same names hold a GroupNorm's `scale`, `bias` in 'params'. Paddings are explicit and
symmetric as in PyTorch, so odd sizes give PyTorch's output sizes.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STAGES = (2, 3, 4, 5)  # res2..res5 produce C2..C5

# torchvision initialises convs with kaiming_normal_(mode='fan_out', nonlinearity='relu').
_CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class FrozenBatchNorm(nn.Module):
  """Batch norm with fixed statistics and affine (torchvision's FrozenBatchNorm2d).

  y = (x - mean) / sqrt(var + epsilon) * scale + bias; all four [C] float32 arrays live
  in the 'batch_stats' collection, so they are never trained.

  Attributes:
    epsilon: added to `var` (torchvision 1e-5; its COCO Mask R-CNN weights use 0.0).
    dtype: compute dtype of the output.
  """
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., C] -> [..., C] in `dtype`."""
    channels = x.shape[-1]
    stat = lambda name, init: self.variable('batch_stats', name, init, (channels,), jnp.float32)
    scale = stat('scale', jnp.ones).value
    bias = stat('bias', jnp.zeros).value
    mean = stat('mean', jnp.zeros).value
    var = stat('var', jnp.ones).value
    multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
    shift = bias - mean * multiplier
    dtype = jnp.dtype(self.dtype)
    return x.astype(dtype) * multiplier.astype(dtype) + shift.astype(dtype)


def _pad(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """PyTorch's symmetric `padding = kernel_size // 2` for a square kernel."""
  return ((kernel_size // 2,) * 2,) * 2


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34); the stride sits on the first.

  Attributes:
    width: output channels.
    stride: 1 or 2.
    conv: nn.Conv constructor (dtype, init, no bias).
    norm: normalization constructor.
  """
  width: int
  stride: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, C_in] -> [B, ceil(H / stride), ceil(W / stride), width]."""
    strides = (self.stride, self.stride)
    y = self.conv(self.width, (3, 3), strides, padding=_pad(3), name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.width, (3, 3), padding=_pad(3), name='conv2')(y)
    y = self.norm(name='bn2')(y)
    return nn.relu(y + _shortcut(self, x, self.width))


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand block (ResNet-50/101, ResNeXt).

  Attributes:
    width: channels of the 1x1 reduce and 3x3 convs.
    stride: 1 or 2, on the 3x3 conv (torchvision v1.5) or on the first 1x1 conv.
    stride_in_1x1: put the stride on the first 1x1 conv (MSRA / Detectron2).
    conv: nn.Conv constructor (dtype, init, no bias).
    norm: normalization constructor.
    out_channels: channels the block outputs; 0 means 4 * width (ResNet).
    groups: groups of the 3x3 conv (ResNeXt's cardinality; 1 for ResNet).
  """
  width: int
  stride: int
  stride_in_1x1: bool
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]
  out_channels: int = 0
  groups: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, C_in] -> [B, ceil(H / stride), ceil(W / stride), out_channels]."""
    out_channels = self.out_channels or 4 * self.width
    strides = (self.stride, self.stride)
    stride_1x1, stride_3x3 = (strides, (1, 1)) if self.stride_in_1x1 else ((1, 1), strides)
    y = self.conv(self.width, (1, 1), stride_1x1, padding=_pad(1), name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.width, (3, 3), stride_3x3, padding=_pad(3),
                  feature_group_count=self.groups, name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(out_channels, (1, 1), padding=_pad(1), name='conv3')(y)
    y = self.norm(name='bn3')(y)
    return nn.relu(y + _shortcut(self, x, out_channels))


def _shortcut(block: nn.Module, x: jax.Array, channels: int) -> jax.Array:
  """Identity, or a strided 1x1 conv + norm when the shape changes (torchvision `downsample`)."""
  if block.stride == 1 and x.shape[-1] == channels:
    return x
  strides = (block.stride, block.stride)
  x = block.conv(channels, (1, 1), strides, padding=_pad(1), name='downsample_conv')(x)
  return block.norm(name='downsample_bn')(x)


class ResStage(nn.Module):
  """`num_blocks` residual blocks named block0.., the first one strided.

  Attributes:
    num_blocks: blocks in the stage.
    width: block width (see BasicBlock / Bottleneck).
    out_channels: Bottleneck output channels (0: 4 * width).
    groups: Bottleneck 3x3 conv groups.
    stride: stride of the first block.
    bottleneck: Bottleneck blocks instead of BasicBlocks.
    stride_in_1x1: see Bottleneck.
    conv: nn.Conv constructor.
    norm: normalization constructor.
  """
  num_blocks: int
  width: int
  stride: int
  bottleneck: bool
  stride_in_1x1: bool
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]
  out_channels: int = 0
  groups: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, C_in] -> [B, ceil(H / stride), ceil(W / stride), C_out]."""
    for b in range(self.num_blocks):
      stride = self.stride if b == 0 else 1
      if self.bottleneck:
        block = Bottleneck(self.width, stride, self.stride_in_1x1, self.conv, self.norm,
                           self.out_channels, self.groups, name=f'block{b}')
      else:
        block = BasicBlock(self.width, stride, self.conv, self.norm, name=f'block{b}')
      x = block(x)
    return x


class Stem(nn.Module):
  """7x7/2 conv (pad 3), norm, ReLU, 3x3/2 max-pool (pad 1 with -inf): stride 4.

  Attributes:
    conv: nn.Conv constructor.
    norm: normalization constructor.
    channels: output channels (64 in every ImageNet ResNet).
  """
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]
  channels: int = 64

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """images: [B, H, W, 3] -> [B, ceil(H / 4), ceil(W / 4), channels]."""
    x = self.conv(self.channels, (7, 7), (2, 2), padding=_pad(7), name='conv1')(images)
    x = nn.relu(self.norm(name='bn1')(x))
    # Padded with -inf, as torch's max_pool2d; padded explicitly (then VALID) because
    # jax2onnx's converter loses max_pool's own padding (a 15 x 15 P2 for 16 x 16).
    x = jnp.pad(x, ((0, 0),) + _pad(3) + ((0, 0),), constant_values=-jnp.inf)
    return nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='VALID')


class ResNet(nn.Module):
  """ResNet body: stem and res2..res5, returning C2..C5.

  Attributes:
    depth: 18 | 34 | 50 | 101.
    norm: 'frozen_bn' (FrozenBatchNorm, statistics in 'batch_stats') | 'group_norm'.
    frozen_bn_eps: epsilon of the frozen batch norms.
    group_norm_groups: groups of each GroupNorm.
    freeze_at: 0 trains everything; k >= 1 stops gradients after the k-th of (stem,
      res2, res3, res4, res5), so 2 (Detectron2's default) freezes stem and res2.
    stride_in_1x1: bottleneck stride on the first 1x1 conv instead of the 3x3 conv.
    base_width: channels of the stem and of res2's 3x3 convs, doubling per stage; 64
      for every ImageNet ResNet (Detectron2's STEM_OUT_CHANNELS); smaller for cheap
      models trained from scratch.
    groups: ResNeXt cardinality, groups of every bottleneck 3x3 conv (1: ResNet).
    width_per_group: channels per group of res2's 3x3 convs at base width 64, so a
      stage's bottleneck width is int(base_width * 2**i * width_per_group / 64) * groups
      (torchvision's rule; 64 with groups=1 is ResNet, 8 with groups=32 ResNeXt 32x8d).
    dtype: compute dtype ('float32' | 'bfloat16' or a jnp dtype); params stay float32.
  """
  depth: int = 50
  norm: str = 'frozen_bn'
  frozen_bn_eps: float = 1e-5
  group_norm_groups: int = 32
  freeze_at: int = 2
  stride_in_1x1: bool = False
  base_width: int = 64
  groups: int = 1
  width_per_group: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """Args:
      images: [B, H, W, 3] float32, normalized.

    Returns:
      {'c2'..'c5'}: [B, ceil(H / 2**l), ceil(W / 2**l), C_l] in the compute dtype for
      level l, C_l = base_width * 2**(l-2), times 4 for depth 50/101.
    """
    if self.depth not in STAGE_BLOCKS:
      raise ValueError(f'depth must be one of {sorted(STAGE_BLOCKS)}; got {self.depth}')
    if not 0 <= self.freeze_at <= 5:
      raise ValueError(f'freeze_at must be in 0..5; got {self.freeze_at}')
    if self.depth < 50 and (self.groups, self.width_per_group) != (1, 64):
      raise ValueError('groups / width_per_group (ResNeXt) need a bottleneck depth (50, '
                       f'101); got depth {self.depth}')
    dtype = jnp.dtype(self.dtype)
    if self.norm == 'frozen_bn':
      norm = functools.partial(FrozenBatchNorm, epsilon=self.frozen_bn_eps, dtype=dtype)
    elif self.norm == 'group_norm':
      norm = functools.partial(nn.GroupNorm, num_groups=self.group_norm_groups,
                               epsilon=1e-5, dtype=dtype)  # torch's GroupNorm eps
    else:
      raise ValueError(f"norm must be 'frozen_bn' or 'group_norm'; got {self.norm!r}")
    conv = functools.partial(nn.Conv, use_bias=False, dtype=dtype, kernel_init=_CONV_INIT)

    x = self._frozen_at(1, Stem(conv, norm, self.base_width, name='stem')(images))
    outputs = {}
    for i, (stage, num_blocks) in enumerate(zip(STAGES, STAGE_BLOCKS[self.depth])):
      planes = self.base_width * 2**i
      width = int(planes * self.width_per_group / 64) * self.groups
      x = ResStage(num_blocks, width=width if self.depth >= 50 else planes,
                   stride=1 if i == 0 else 2, bottleneck=self.depth >= 50,
                   stride_in_1x1=self.stride_in_1x1, conv=conv, norm=norm,
                   out_channels=4 * planes, groups=self.groups, name=f'res{stage}')(x)
      x = self._frozen_at(stage, x)
      outputs[f'c{stage}'] = x
    return outputs

  def _frozen_at(self, level: int, x: jax.Array) -> jax.Array:
    """The output of level 1 (stem) .. 5 (res5): gradients stop there up to freeze_at."""
    if self.freeze_at >= level:
      x = jax.lax.stop_gradient(x)
    return x
