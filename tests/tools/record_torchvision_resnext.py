"""Records torchvision's ResNeXt body outputs for tests/model/test_resnext.py.

Run with the torch venv (not the project venv):
  PYTHONPATH=. /work/tvenv/bin/python tests/tools/record_torchvision_resnext.py
torchvision's `resnext50_32x4d` (32 groups of 4 channels, FrozenBatchNorm2d), filled
with `seeded_weights.seeded_state_dict` values and run in float64 on one
[1, 3, 67, 90] image (odd sizes exercise the paddings). Writes
tests/fixtures/torchvision_resnext.npz with `seed`, `names` / `shapes` (0-padded) of its
state dict (fc.* included), `images` [1, 67, 90, 3] float32 (NHWC), per output k in
c2..c5 `channels_k` (a strided channel subset) and `k` [1, H_k, W_k, n_k] float32, and
`full_names` / `full_shapes` of `resnext101_32x8d` for a key coverage check.
"""

import pathlib

import numpy as np
import torch
from torchvision.models import resnext50_32x4d
from torchvision.models import resnext101_32x8d
from torchvision.ops import misc as misc_nn_ops

from tests.tools import seeded_weights

OUT = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'torchvision_resnext.npz'
SEED = 0
IMAGE_SHAPE = (1, 67, 90, 3)
MAX_VALUES = 8_000  # per stored output


def _padded(names_and_shapes):
  return (np.array([name for name, _ in names_and_shapes]),
          np.array([shape + (0,) * (4 - len(shape)) for _, shape in names_and_shapes]))


def main():
  model = resnext50_32x4d(weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d).eval()
  names_and_shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
  weights = seeded_weights.seeded_state_dict(names_and_shapes, SEED)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
  model.double()
  images = np.random.default_rng(SEED + 1).standard_normal(IMAGE_SHAPE).astype(np.float32)
  outputs = {}
  with torch.no_grad():
    x = torch.from_numpy(images).permute(0, 3, 1, 2).double()
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    for stage in range(1, 5):
      x = getattr(model, f'layer{stage}')(x)
      outputs[f'c{stage + 1}'] = x
  names, shapes = _padded(names_and_shapes)
  full = resnext101_32x8d(weights=None)
  full_names, full_shapes = _padded([(k, tuple(v.shape)) for k, v in full.state_dict().items()
                                     if not k.endswith('num_batches_tracked')])
  arrays = dict(seed=np.array(SEED), names=names, shapes=shapes, images=images,
                full_names=full_names, full_shapes=full_shapes)
  for key, value in outputs.items():
    value = value.permute(0, 2, 3, 1).numpy()
    stride = 1
    while value.shape[-1] // stride * value.shape[1] * value.shape[2] > MAX_VALUES:
      stride *= 2
    channels = np.arange(0, value.shape[-1], stride)
    arrays[f'channels_{key}'] = channels
    arrays[key] = value[..., channels].astype(np.float32)
    print(key, value.shape, 'std', value.std(), 'kept', len(channels))
  np.savez_compressed(OUT, **arrays)
  print(f'wrote {OUT} ({OUT.stat().st_size} bytes)')


if __name__ == '__main__':
  main()
