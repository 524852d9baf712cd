"""Records torchvision keypointrcnn_resnet50_fpn inference for tests/model/test_keypoint_rcnn.py.

Run with the torch venv (not the project venv):
  PYTHONPATH=. /work/tvenv/bin/python tests/tools/record_torchvision_keypointrcnn.py

The model is built as torchvision builds it for its COCO weights (FrozenBatchNorm2d,
`overwrite_eps(model, 0.0)`, 2 classes, 17 keypoints) with MIN_SIZE/MAX_SIZE below
800/1333 and 10 detections per image so the CPU test stays quick, filled with `seeded_weights` values made
detection-friendly by `keypoint_friendly` (importable without torch, so the test
rebuilds the same weights), and run in eval mode. Stored per image i: `image_i`
[H, W, 3] uint8, `resized_shape_i` [2], `boxes_i` [n, 4], `scores_i` [n],
`keypoints_i` [n, 17, 3] and `keypoint_scores_i` [n, 17] (original pixels). For image 0
also the keypoint head's logits of its first NUM_HEATMAPS detections `heatmaps_0`
[m, 17, 56, 56], their boxes in the resized frame `heatmap_boxes_0` [m, 4] and
`heatmaps_to_keypoints` of them `resized_keypoints_0` [m, 17, 3],
`resized_keypoint_scores_0` [m, 17].
"""

import pathlib

import numpy as np

from tests.tools import seeded_weights

OUT = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'torchvision_keypointrcnn.npz'
SEED = 1
MIN_SIZE, MAX_SIZE = 320, 512
# Images 0 and 2 resize and pad to the same shape (one compilation), image 1 to another.
IMAGE_SHAPES = ((240, 320), (300, 200), (250, 330))
# Fewer than torchvision's 100 detections: the 8 x 512 convs of the keypoint head on each
# detection are most of the CPU time of the test.
DETECTIONS_PER_IMAGE = 10
NUM_HEATMAPS = 2


def keypoint_friendly(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`seeded_weights.detection_friendly`'s scaling for a 2-class Keypoint R-CNN.

  Shrunk box regressors and RPN logits (see there), and a person prior of 4.0 so random
  weights give detections above the 0.05 score threshold.
  """
  adjusted = dict(state_dict)
  for key in ('rpn.head.cls_logits.weight', 'rpn.head.bbox_pred.weight',
              'roi_heads.box_predictor.bbox_pred.weight',
              'roi_heads.box_predictor.cls_score.weight'):
    adjusted[key] = (0.1 * state_dict[key]).astype(np.float32)
  adjusted['roi_heads.box_predictor.cls_score.bias'] = np.array([0.0, 4.0], np.float32)
  return adjusted


def seeded_keypointrcnn(names_and_shapes) -> dict[str, np.ndarray]:
  """The recorded weights from the stored names and shapes."""
  return keypoint_friendly(seeded_weights.seeded_state_dict(names_and_shapes, SEED))


def build_model():
  """keypointrcnn_resnet50_fpn exactly as torchvision builds it around its COCO weights."""
  import torch  # pylint: disable=import-outside-toplevel
  from torchvision.models import resnet50  # pylint: disable=import-outside-toplevel
  from torchvision.models.detection import backbone_utils  # pylint: disable=import-outside-toplevel
  from torchvision.models.detection import keypoint_rcnn  # pylint: disable=import-outside-toplevel
  from torchvision.models.detection._utils import overwrite_eps  # pylint: disable=import-outside-toplevel
  from torchvision.ops import misc as misc_nn_ops  # pylint: disable=import-outside-toplevel
  del torch
  backbone = backbone_utils._resnet_fpn_extractor(  # pylint: disable=protected-access
      resnet50(weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d), 3)
  model = keypoint_rcnn.KeypointRCNN(backbone, num_classes=2, num_keypoints=17,
                                     min_size=MIN_SIZE, max_size=MAX_SIZE,
                                     box_detections_per_img=DETECTIONS_PER_IMAGE)
  overwrite_eps(model, 0.0)
  return model.eval()


def main():
  import torch  # pylint: disable=import-outside-toplevel
  from torchvision.models.detection import roi_heads  # pylint: disable=import-outside-toplevel
  model = build_model()
  names_and_shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()
                      if not k.endswith('num_batches_tracked')]
  weights = seeded_keypointrcnn(names_and_shapes)
  missing, unexpected = model.load_state_dict(
      {k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
  assert not unexpected and all(k.endswith('num_batches_tracked') for k in missing)

  captured = {}
  model.transform.register_forward_hook(lambda m, i, out: captured.update(image_list=out[0]))
  model.roi_heads.keypoint_predictor.register_forward_hook(
      lambda m, i, out: captured.update(heatmaps=out))
  model.roi_heads.register_forward_hook(lambda m, i, out: captured.update(result=out[0]))

  max_rank = max(len(s) for _, s in names_and_shapes)
  record = {
      'seed': np.int64(SEED), 'min_size': np.int64(MIN_SIZE), 'max_size': np.int64(MAX_SIZE),
      'detections_per_image': np.int64(DETECTIONS_PER_IMAGE),
      'names': np.array([n for n, _ in names_and_shapes]),
      'shapes': np.array([list(s) + [0] * (max_rank - len(s)) for _, s in names_and_shapes]),
  }
  with torch.no_grad():
    for i, (height, width) in enumerate(IMAGE_SHAPES):
      image = seeded_weights.smooth_image(height, width, seed=SEED + 20 + i)
      tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
      output = model([tensor])[0]
      record[f'image_{i}'] = image
      record[f'resized_shape_{i}'] = np.array(captured['image_list'].image_sizes[0])
      record[f'boxes_{i}'] = output['boxes'].numpy()
      record[f'scores_{i}'] = output['scores'].numpy()
      record[f'keypoints_{i}'] = output['keypoints'].numpy()
      record[f'keypoint_scores_{i}'] = output['keypoints_scores'].numpy()
      if i == 0:
        boxes = captured['result'][0]['boxes'][:NUM_HEATMAPS]
        heatmaps = captured['heatmaps'][:NUM_HEATMAPS]
        keypoints, scores = roi_heads.heatmaps_to_keypoints(heatmaps, boxes)
        record['heatmap_boxes_0'] = boxes.numpy()
        record['heatmaps_0'] = heatmaps.numpy()
        record['resized_keypoints_0'] = keypoints.numpy()
        record['resized_keypoint_scores_0'] = scores.numpy()
      print(f'image {i} {height}x{width}: resized {record[f"resized_shape_{i}"]}, '
            f'{len(output["boxes"])} detections, top scores {output["scores"][:3].tolist()}')
  np.savez_compressed(OUT, **record)
  print(f'wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)')


if __name__ == '__main__':
  main()
