"""Records torchvision's ResNet-50 + FPN backbone outputs for tests/convert/test_torchvision_weights.py.

Run with the torch venv (not the project venv):
  PYTHONPATH=. /work/tvenv/bin/python tests/tools/record_torchvision_backbone.py
The backbone is `maskrcnn_resnet50_fpn`'s (FrozenBatchNorm2d, as with pretrained
weights), filled with `seeded_weights.seeded_state_dict` values and run in float64 on
one [1, 3, 97, 130] image (odd sizes exercise PyTorch's paddings and the FPN crop).
Writes tests/fixtures/torchvision_backbone.npz with `seed`, `frozen_bn_eps`, `names`
[n] str and `shapes` [n, 4] int (0-padded) of the state dict keys with the
`backbone.` prefix, `images` [1, 97, 130, 3] float32 (NHWC, float16-representable), and
per output k in c2..c5 (backbone.body) and p2..p6 (backbone.fpn's '0'..'3', 'pool'):
`channels_k` [n_k] int, a strided channel subset, and `k` [1, H_k, W_k, n_k] float32.
"""

import pathlib

import numpy as np
import torch
from torchvision.models import resnet50
from torchvision.models.detection import backbone_utils
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.ops import misc as misc_nn_ops

from tests.tools import seeded_weights

OUT = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'torchvision_backbone.npz'
SEED = 0
IMAGE_SHAPE = (1, 97, 130, 3)
MAX_VALUES = 25_000  # per stored output, to keep the fixture well under 1 MB


def build_backbone() -> torch.nn.Module:
  """maskrcnn_resnet50_fpn's backbone with FrozenBatchNorm2d (eps 1e-5)."""
  backbone = backbone_utils._resnet_fpn_extractor(  # pylint: disable=protected-access
      resnet50(weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d), 3)
  reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).backbone
  expected = {k for k in reference.state_dict() if not k.endswith('num_batches_tracked')}
  assert set(backbone.state_dict()) == expected
  return backbone.eval()


def main():
  backbone = build_backbone()
  names_and_shapes = [(f'backbone.{k}', tuple(v.shape)) for k, v in backbone.state_dict().items()]
  weights = seeded_weights.seeded_state_dict(names_and_shapes, SEED)
  backbone.load_state_dict({k[len('backbone.'):]: torch.from_numpy(v) for k, v in weights.items()})
  backbone.double()

  rng = np.random.default_rng(SEED + 1)
  images = rng.standard_normal(IMAGE_SHAPE).astype(np.float16).astype(np.float32)
  with torch.no_grad():
    x = torch.from_numpy(images).permute(0, 3, 1, 2).double()
    body = backbone.body(x)
    pyramid = backbone(x)
  outputs = {f'c{i + 2}': body[str(i)] for i in range(4)}
  outputs.update({f'p{i + 2}': pyramid[str(i)] for i in range(4)})
  outputs['p6'] = pyramid['pool']

  arrays = {
      'seed': np.array(SEED),
      'frozen_bn_eps': np.array(1e-5),
      'names': np.array([name for name, _ in names_and_shapes]),
      'shapes': np.array([shape + (0,) * (4 - len(shape)) for _, shape in names_and_shapes]),
      'images': images,
  }
  for key, value in outputs.items():
    value = value.permute(0, 2, 3, 1).numpy()
    stride = 1
    while value.shape[-1] // stride * value.shape[1] * value.shape[2] > MAX_VALUES:
      stride *= 2
    channels = np.arange(0, value.shape[-1], stride)
    arrays[f'channels_{key}'] = channels
    arrays[key] = value[..., channels].astype(np.float32)
    print(key, value.shape, 'std', value.std(), 'kept', len(channels))
  OUT.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(OUT, **arrays)
  print(f'wrote {OUT} ({OUT.stat().st_size} bytes)')


if __name__ == '__main__':
  main()
