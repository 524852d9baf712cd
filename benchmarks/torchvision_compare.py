"""torchvision's Mask R-CNN timed like ours (`--compare torchvision`), in a child process.

The model has the same depth, classes, frozen stages (FrozenBatchNorm, as with an
ImageNet backbone), RPN/RoI counts and input size; it runs in a spawned process of its
own (so its memory is its own) with the same number of threads: train = forward +
backward + SGD step in train mode on the same synthetic targets, infer = eval-mode
forward including its mask pasting; bfloat16 cases run it under torch.autocast (float32
parameters, as ours). Needs torch and torchvision importable; the package itself never
imports torch.

torchvision runs its mask head on the positive proposals it found, not on a static
sample as ours: with random weights those are about the ground-truth boxes themselves,
so `instances` sets its mask work, which the result counts.
"""

import importlib.util
import sys
from typing import Any

import numpy as np

from benchmarks import model_step
from benchmarks import timing

FRAMEWORK = 'torchvision'


def torchvision_missing() -> str:
  """Why torch/torchvision cannot be used here, or '' when they can."""
  missing = [n for n in ('torch', 'torchvision') if importlib.util.find_spec(n) is None]
  return (f'--compare torchvision needs {" and ".join(missing)} importable by '
          f'{sys.executable}; skipping the comparison') if missing else ''


def _build_model(config_dict: dict[str, Any], device):
  """torchvision's MaskRCNN with our config's depth, frozen stages, counts and size."""
  import torchvision  # pylint: disable=import-outside-toplevel
  from torchvision.models.detection import backbone_utils  # pylint: disable=import-outside-toplevel
  m, d = config_dict['model'], config_dict['data']
  height, width = d['image_size']
  # Frozen BN and frozen early stages as when starting from an ImageNet backbone;
  # maskrcnn_resnet50_fpn(weights_backbone=None) would train plain BatchNorm everywhere.
  backbone = backbone_utils.resnet_fpn_backbone(
      backbone_name=f'resnet{m["backbone"]["depth"]}', weights=None,
      trainable_layers=5 - m['backbone']['freeze_at'])
  return torchvision.models.detection.MaskRCNN(
      backbone, num_classes=m['num_classes'] + 1, min_size=min(height, width),
      max_size=max(height, width),
      rpn_pre_nms_top_n_train=m['rpn']['pre_nms_topk_train'],
      rpn_pre_nms_top_n_test=m['rpn']['pre_nms_topk_test'],
      rpn_post_nms_top_n_train=m['rpn']['post_nms_topk_train'],
      rpn_post_nms_top_n_test=m['rpn']['post_nms_topk_test'],
      rpn_batch_size_per_image=m['rpn']['batch_size_per_image'],
      box_batch_size_per_image=m['roi_heads']['batch_size_per_image'],
      box_score_thresh=m['roi_heads']['score_threshold'],
      box_detections_per_img=m['roi_heads']['detections_per_image']).to(device)


def _synthetic_targets(config_dict: dict[str, Any], seed: int, instances: int, device
                       ) -> list[dict[str, Any]]:
  """`model_step.synthetic_instances` as torchvision targets: masks filling their boxes."""
  import torch  # pylint: disable=import-outside-toplevel
  m, d = config_dict['model'], config_dict['data']
  batch_size = config_dict['train']['batch_size']
  height, width = d['image_size']
  boxes, classes = model_step.synthetic_instances(seed, batch_size, height, width,
                                                  m['num_classes'],
                                                  min(instances, d['max_instances']))
  targets = []
  for b in range(batch_size):
    masks = np.zeros((len(boxes[b]), height, width), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes[b].round().astype(int)):
      masks[i, y1:y2, x1:x2] = 1
    targets.append({'boxes': torch.from_numpy(boxes[b]).to(device),
                    'labels': torch.from_numpy(classes[b].astype(np.int64)).to(device),
                    'masks': torch.from_numpy(masks).to(device)})
  return targets


def _time_train(model, config_dict, steps, warmup, seed, instances, device, autocast,
                synchronize) -> dict[str, Any]:
  """Forward + backward + SGD step in train mode; the mask head's RoIs counted."""
  import torch  # pylint: disable=import-outside-toplevel
  batch_size = config_dict['train']['batch_size']
  height, width = config_dict['data']['image_size']
  rng = np.random.default_rng(seed)
  targets = _synthetic_targets(config_dict, seed, instances, device)
  images = [torch.from_numpy(rng.uniform(0, 1, (3, height, width)).astype(np.float32)
                             ).to(device) for _ in range(batch_size)]
  t = config_dict['train']
  optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                              lr=t['base_lr'], momentum=t['momentum'],
                              weight_decay=t['weight_decay'])
  model.train()
  # torchvision runs its mask head on each image's positive proposals only: count them.
  mask_rois = []
  model.roi_heads.mask_head.register_forward_hook(
      lambda module, inputs, output: mask_rois.append(inputs[0].shape[0]))

  def train_once():
    with autocast():
      losses = model(images, targets)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    synchronize()

  step_timing = timing.time_calls(train_once, steps, warmup)
  return {'rows': [model_step.timing_row(FRAMEWORK, 'train step', step_timing, batch_size)],
          'mask_head_rois_per_image': float(np.mean(mask_rois[-steps:])) / batch_size}


def _time_infer(model, config_dict, steps, warmup, seed, device, autocast,
                synchronize) -> dict[str, Any]:
  """Eval-mode forward of uint8 images, its own mask pasting included."""
  import torch  # pylint: disable=import-outside-toplevel
  batch_size = config_dict['train']['batch_size']
  height, width = config_dict['data']['image_size']
  rng = np.random.default_rng(seed)
  images = [rng.integers(0, 256, (height, width, 3), np.uint8) for _ in range(batch_size)]
  model.eval()
  outputs = []

  @torch.no_grad()
  def predict_once():
    tensors = [torch.from_numpy(i).to(device).permute(2, 0, 1).float() / 255 for i in images]
    with autocast():
      outputs[:] = model(tensors)
    synchronize()

  return {'rows': [model_step.timing_row(FRAMEWORK, 'eval forward (paste incl.)',
                                         timing.time_calls(predict_once, steps, warmup),
                                         batch_size)],
          'detections_per_image': float(np.mean([len(o['scores']) for o in outputs]))}


def benchmark_torchvision(config_dict: dict[str, Any], mode: str, steps: int, warmup: int,
                          seed: int, threads: int, use_cuda: bool, instances: int
                          ) -> dict[str, Any]:
  """Like `model_step.benchmark_jax` for torchvision's Mask R-CNN; run in a process of its
  own (`config_dict`: the case's `config.to_dict()`)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel

  before = timing.host_peak_mb()  # after the imports, as for maskrcnn-jax
  torch.set_num_threads(threads)
  torch.manual_seed(seed)
  device = torch.device('cuda' if use_cuda else 'cpu')
  bfloat16 = config_dict['model']['dtype'] == 'bfloat16'
  autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16)
  synchronize = torch.cuda.synchronize if use_cuda else lambda: None
  model = _build_model(config_dict, device)
  if mode == 'train':
    part = _time_train(model, config_dict, steps, warmup, seed, instances, device, autocast,
                       synchronize)
  else:
    part = _time_infer(model, config_dict, steps, warmup, seed, device, autocast,
                       synchronize)
  rows = part.pop('rows')
  return {'rows': rows, **timing.host_memory(before),
          'device_peak_mb': torch.cuda.max_memory_allocated() / 2**20 if use_cuda else 'n/a',
          'torch_version': torch.__version__, 'torchvision_version': torchvision.__version__,
          'threads': torch.get_num_threads(), **part}
