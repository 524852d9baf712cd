"""Feature pyramid network (Lin et al. 2017) over C2..C5, with P6 for the RPN.

torchvision's FeaturePyramidNetwork + LastLevelMaxPool: a 1x1 lateral conv per level, a
top-down path of nearest-neighbour upsampling added to the laterals, a 3x3 output conv
per level, and P6 = max-pool(kernel 1, stride 2) of P5. Parameter tree, with the
torchvision state dict keys (`backbone.fpn.` prefix) it converts from (see convert.py):

  lateral{l}/kernel, bias  <- inner_blocks.{l-2}.0.weight, .bias   l = 2..5
  output{l}/kernel, bias   <- layer_blocks.{l-2}.0.weight, .bias
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

LEVELS = (2, 3, 4, 5)

# torchvision initialises the FPN convs with kaiming_uniform_(a=1) and zero biases.
_CONV_INIT = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')


def upsample_nearest(x: jax.Array, height: int, width: int) -> jax.Array:
  """torch's F.interpolate(size=(height, width), mode='nearest') for a 2x upsampling.

  A stride-2 layer maps n rows to ceil(n / 2), so a lateral has 2h or 2h - 1 rows for
  a top-down input of h rows; torch's source row floor(i * h / height) is then i // 2
  in both cases, i.e. repeat twice and crop.

  Args:
    x: [B, h, w, C].
    height, width: target size, height in {2h - 1, 2h}, width in {2w - 1, 2w}.

  Returns:
    [B, height, width, C].
  """
  h, w = x.shape[1:3]
  if height not in (2 * h - 1, 2 * h) or width not in (2 * w - 1, 2 * w):
    raise ValueError(f'cannot upsample {h}x{w} by 2 to {height}x{width}')
  x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return x[:, :height, :width]


class FPN(nn.Module):
  """C2..C5 -> P2..P6 with `channels` channels each.

  Attributes:
    channels: output channels of every level (256 in the paper).
    dtype: compute dtype ('float32' | 'bfloat16' or a jnp dtype); params stay float32.
  """
  channels: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Args:
      features: {'c2'..'c5'}: [B, H_l, W_l, C_l] with H_{l+1} = ceil(H_l / 2).

    Returns:
      {'p2'..'p6'}: [B, H_l, W_l, channels] in the compute dtype, H_6 = ceil(H_5 / 2).
    """
    dtype = jnp.dtype(self.dtype)
    outputs = {}
    top_down = None
    for level in reversed(LEVELS):
      x = nn.Conv(self.channels, (1, 1), dtype=dtype, kernel_init=_CONV_INIT,
                  name=f'lateral{level}')(features[f'c{level}'])
      if top_down is not None:
        x = x + upsample_nearest(top_down, x.shape[1], x.shape[2])
      top_down = x
      outputs[f'p{level}'] = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)),
                                     dtype=dtype, kernel_init=_CONV_INIT,
                                     name=f'output{level}')(x)
    outputs['p6'] = outputs['p5'][:, ::2, ::2]
    return {f'p{level}': outputs[f'p{level}'] for level in (*LEVELS, 6)}
