"""Records Detectron2 GeneralizedRCNN inference for tests/inference/test_predictor_detectron2.py.

Run with the torch venv and Detectron2's source (not the project venv):
  PYTHONPATH=.:/work/detectron2_src /work/tvenv/bin/python tests/tools/record_detectron2_predictor.py

The reduced mask_rcnn_R_50_FPN_1x of record_detectron2_convert.py (narrow widths, 5
classes) with its own inference settings (POOLER_SAMPLING_RATIO 0, ResizeShortestEdge
with Pillow, padding to 32, paste_masks_in_image), but MIN_SIZE_TEST / MAX_SIZE_TEST
below 800 / 1333 and 30 detections per image so that the CPU test stays quick. Seeded
weights made detection-friendly (small regressors, a few classes with a large prior),
run in float32 through DefaultPredictor's path (RGB image -> BGR -> resize -> model).
The weights are not stored: the test rebuilds them from `seed`, `names` / `shapes` and
`friendly` (the rows scaled and the class biases). Stored per image i: `image_i`
[H, W, 3] uint8 RGB, `boxes_i` [n, 4] original pixels, `scores_i` [n], `classes_i` [n]
(Detectron2's 0..K-1), `masks_i` (packbits of [n, H, W] bool).
"""

import pathlib

import numpy as np
import torch
from detectron2.data import transforms as T

from tests.tools import record_detectron2_convert as convert_recorder
from tests.tools import seeded_weights
from tests.tools.detectron2_weights import friendly

OUT = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'detectron2_predictor.npz'
SEED = 0
MIN_SIZE, MAX_SIZE = 160, 256
DETECTIONS = 30
IMAGE_SHAPES = ((120, 160), (117, 155), (150, 100))  # 0 and 1 pad alike


def main():
  cfg, model = convert_recorder.build('mask_rcnn_R_50_FPN_1x.yaml', groups=1, width_per_group=4)
  cfg.defrost()
  cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0  # back to the zoo's adaptive sampling
  cfg.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 0
  cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = MIN_SIZE, MAX_SIZE
  cfg.TEST.DETECTIONS_PER_IMAGE = DETECTIONS
  from detectron2.modeling import build_model  # pylint: disable=import-outside-toplevel
  model = build_model(cfg).eval()
  names_and_shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
  weights = friendly(seeded_weights.seeded_state_dict(names_and_shapes, SEED))
  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
  resize = T.ResizeShortestEdge([MIN_SIZE, MIN_SIZE], MAX_SIZE)
  names = np.array([n for n, _ in names_and_shapes])
  shapes = np.array([s + (0,) * (4 - len(s)) for _, s in names_and_shapes])
  arrays = dict(seed=np.array(SEED), names=names, shapes=shapes, min_size=np.array(MIN_SIZE),
                max_size=np.array(MAX_SIZE), detections=np.array(DETECTIONS))
  for i, (h, w) in enumerate(IMAGE_SHAPES):
    rgb = seeded_weights.smooth_image(h, w, seed=10 + i)
    bgr = rgb[..., ::-1]  # DefaultPredictor's input format
    image = resize.get_transform(bgr).apply_image(bgr)
    tensor = torch.as_tensor(image.astype('float32').transpose(2, 0, 1))
    with torch.no_grad():
      instances = model([{'image': tensor, 'height': h, 'width': w}])[0]['instances']
    arrays[f'image_{i}'] = rgb
    arrays[f'boxes_{i}'] = instances.pred_boxes.tensor.numpy()
    arrays[f'scores_{i}'] = instances.scores.numpy()
    arrays[f'classes_{i}'] = instances.pred_classes.numpy()
    arrays[f'masks_{i}'] = np.packbits(instances.pred_masks.numpy())
    print(i, image.shape, len(instances), instances.scores[:5].numpy(),
          np.bincount(instances.pred_classes.numpy(), minlength=5))
  np.savez_compressed(OUT, **arrays)
  print(f'wrote {OUT} ({OUT.stat().st_size} bytes)')


if __name__ == '__main__':
  main()
