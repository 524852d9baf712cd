"""Records torchvision maskrcnn_resnet50_fpn inference for tests/inference/test_predictor_torchvision.py.

Run with the torch venv (not the project venv):
  PYTHONPATH=. /work/tvenv/bin/python tests/tools/record_torchvision_maskrcnn.py

The model is built as torchvision builds it for its COCO weights (FrozenBatchNorm2d,
`overwrite_eps(model, 0.0)`), but with MIN_SIZE/MAX_SIZE below 800/1333 so the CPU test
stays quick, filled with `seeded_weights` values (made detection-friendly), and run in
eval mode. The weights are not stored: the test rebuilds them from `seed` and `names` /
`shapes`. Stored per image i: `image_i` [H, W, 3] uint8, `resized_shape_i` [2] (h, w
after torchvision's resize), `proposals_i` [P, 4] (RPN output in the resized frame),
`boxes_i` [n, 4] (original pixels), `scores_i` [n], `labels_i` [n], `masks_i`
(packbits of [n, H, W] probabilities > 0.5); and for image 0 a strided channel subset
of the FPN outputs `fpn_<level>` [1, H_l, W_l, n_l] with `fpn_channels`.
"""

import pathlib

import numpy as np
import torch
from torchvision.models import resnet50
from torchvision.models.detection import backbone_utils
from torchvision.models.detection import mask_rcnn
from torchvision.models.detection._utils import overwrite_eps
from torchvision.ops import misc as misc_nn_ops

from tests.tools import seeded_weights

OUT = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'torchvision_maskrcnn.npz'
SEED = 0
MIN_SIZE, MAX_SIZE = 320, 512
# Images 0 and 1 resize and pad to the same shape (one compilation), image 2 to another.
IMAGE_SHAPES = ((240, 320), (232, 310), (300, 200))
FPN_CHANNEL_STRIDE = 32


def build_model() -> torch.nn.Module:
  """maskrcnn_resnet50_fpn exactly as torchvision builds it around its COCO weights."""
  backbone = backbone_utils._resnet_fpn_extractor(  # pylint: disable=protected-access
      resnet50(weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d), 3)
  model = mask_rcnn.MaskRCNN(backbone, num_classes=91, min_size=MIN_SIZE, max_size=MAX_SIZE)
  overwrite_eps(model, 0.0)
  return model.eval()


def main():
  model = build_model()
  names_and_shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()
                      if not k.endswith('num_batches_tracked')]
  weights = seeded_weights.detection_friendly(
      seeded_weights.seeded_state_dict(names_and_shapes, SEED))
  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)

  captured = {}
  model.backbone.register_forward_hook(lambda m, i, out: captured.update(fpn=out))
  model.rpn.register_forward_hook(lambda m, i, out: captured.update(proposals=out[0]))
  model.transform.register_forward_hook(lambda m, i, out: captured.update(image_list=out[0]))

  max_rank = max(len(s) for _, s in names_and_shapes)
  record = {
      'seed': np.int64(SEED), 'min_size': np.int64(MIN_SIZE), 'max_size': np.int64(MAX_SIZE),
      'names': np.array([n for n, _ in names_and_shapes]),
      'shapes': np.array([list(s) + [0] * (max_rank - len(s)) for _, s in names_and_shapes]),
  }
  with torch.no_grad():
    for i, (height, width) in enumerate(IMAGE_SHAPES):
      image = seeded_weights.smooth_image(height, width, seed=SEED + 10 + i)
      tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
      output = model([tensor])[0]
      image_size = captured['image_list'].image_sizes[0]
      record[f'image_{i}'] = image
      record[f'resized_shape_{i}'] = np.array(image_size)
      record[f'proposals_{i}'] = captured['proposals'][0].numpy()
      record[f'boxes_{i}'] = output['boxes'].numpy()
      record[f'scores_{i}'] = output['scores'].numpy()
      record[f'labels_{i}'] = output['labels'].numpy()
      record[f'masks_{i}'] = np.packbits(output['masks'][:, 0].numpy() > 0.5)
      if i == 0:
        channels = np.arange(0, 256, FPN_CHANNEL_STRIDE)
        record['fpn_channels'] = channels
        for key, level in (('0', 2), ('1', 3), ('2', 4), ('3', 5), ('pool', 6)):
          record[f'fpn_p{level}'] = (
              captured['fpn'][key][:, channels].permute(0, 2, 3, 1).numpy())
      print(f'image {i} {height}x{width}: resized {tuple(image_size)}, '
            f'{len(output["boxes"])} detections, top scores {output["scores"][:3].tolist()}')
  np.savez_compressed(OUT, **record)
  print(f'wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)')


if __name__ == '__main__':
  main()
