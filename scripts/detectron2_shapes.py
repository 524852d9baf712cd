"""Detectron2's side of the side-by-side training run on the shapes data (an outside step).

Not part of the package: it runs in an environment with torch and Detectron2's source
(docs/benchmarks.md, "Training against Detectron2", has the set-up), e.g.
  PYTHONPATH=/path/to/detectron2 python scripts/detectron2_shapes.py \
      --data workdir/side_by_side/shapes --out workdir/side_by_side/detectron2

It builds the model of configs/shapes_side_by_side.py from Detectron2's own config keys,
saves the weights Detectron2 initialised as <out>/init.pkl (our side starts from them:
scripts/convert_weights.py --kind detectron2), trains with Detectron2's DefaultTrainer
(its metrics.json has the losses every 20 iterations) and evaluates the val split with
its COCOEvaluator into <out>/eval.json (AP as fractions, like ours).
"""

import argparse
import json
import os
import pickle

import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import inference_on_dataset
from detectron2.data import build_detection_test_loader


def side_by_side_config(steps: int, seed: int, out: str):
  """configs/shapes_side_by_side.py in Detectron2's keys."""
  cfg = get_cfg()
  cfg.merge_from_file(model_zoo.get_config_file('COCO-InstanceSegmentation/'
                                                'mask_rcnn_R_50_FPN_1x.yaml'))
  m = cfg.MODEL
  m.DEVICE, m.WEIGHTS, m.MASK_ON = 'cpu', '', True
  m.RESNETS.DEPTH, m.RESNETS.RES2_OUT_CHANNELS, m.RESNETS.NORM = 18, 64, 'GN'
  m.BACKBONE.FREEZE_AT = 0
  m.FPN.OUT_CHANNELS = 32
  m.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
  m.RPN.PRE_NMS_TOPK_TRAIN = m.RPN.PRE_NMS_TOPK_TEST = 256
  m.RPN.POST_NMS_TOPK_TRAIN, m.RPN.POST_NMS_TOPK_TEST = 128, 64
  m.RPN.BATCH_SIZE_PER_IMAGE = 64
  m.ROI_HEADS.NUM_CLASSES, m.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 4, 64
  m.ROI_BOX_HEAD.FC_DIM = 256
  m.ROI_MASK_HEAD.CONV_DIM, m.ROI_MASK_HEAD.NUM_CONV = 32, 2
  cfg.TEST.DETECTIONS_PER_IMAGE = 20
  cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (128,), 128
  cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 128
  cfg.INPUT.MASK_FORMAT = 'bitmask'  # the shapes data holds RLE masks as well as polygons
  cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ('shapes_train',), ('shapes_val',)
  cfg.DATALOADER.NUM_WORKERS = 1
  assert cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS  # as ours: images with no instance are skipped
  s = cfg.SOLVER
  s.IMS_PER_BATCH, s.BASE_LR, s.MAX_ITER = 8, 0.02, steps
  s.WARMUP_ITERS, s.STEPS = 100, tuple(int(steps * f) for f in (0.75, 0.925))
  s.CLIP_GRADIENTS.ENABLED = True
  s.CLIP_GRADIENTS.CLIP_TYPE, s.CLIP_GRADIENTS.CLIP_VALUE = 'norm', 1.0
  s.CHECKPOINT_PERIOD = steps
  cfg.SEED = seed
  cfg.OUTPUT_DIR = out
  return cfg


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', required=True, help='the shapes root (train/, val/, annotations/)')
  parser.add_argument('--out', required=True)
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--threads', type=int, default=2)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  for split in ('train', 'val'):
    register_coco_instances(f'shapes_{split}', {},
                            os.path.join(args.data, 'annotations', f'instances_{split}.json'),
                            os.path.join(args.data, split))
  os.makedirs(args.out, exist_ok=True)
  cfg = side_by_side_config(args.steps, args.seed, args.out)
  trainer = DefaultTrainer(cfg)
  state = {k: v.detach().numpy().copy() for k, v in trainer.model.state_dict().items()}
  with open(os.path.join(args.out, 'init.pkl'), 'wb') as f:
    pickle.dump({'model': state, '__author__': 'detectron2_shapes.py'}, f)
  trainer.train()
  evaluator = COCOEvaluator('shapes_val', output_dir=os.path.join(args.out, 'eval'))
  results = inference_on_dataset(trainer.model, build_detection_test_loader(cfg, 'shapes_val'),
                                 evaluator)
  metrics = {task: {k: v / 100.0 for k, v in values.items()} for task, values in results.items()}
  with open(os.path.join(args.out, 'eval.json'), 'w') as f:
    json.dump(metrics, f, indent=1)
  print({task: round(values['AP'], 4) for task, values in metrics.items()})


if __name__ == '__main__':
  main()
