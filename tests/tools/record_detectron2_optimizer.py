"""Records Detectron2's optimizer on given gradients for tests/train/test_optimizer.py.

Run with the torch venv and Detectron2's source (not the project venv):
  PYTHONPATH=.:/work/detectron2_src /work/tvenv/bin/python \
      tests/tools/record_detectron2_optimizer.py

A small module whose parameters play every role the optimizer tells apart: a frozen stem
and res2 (requires_grad False, as FREEZE_AT 2 leaves them), convolution weights and
biases, GroupNorm weights and biases in and out of the frozen stages, a linear layer.
`build_optimizer` and `build_lr_scheduler` of the 1x solver (shortened: warmup 8, decay
at 14, 20 iterations) step it with seeded gradients of different sizes per parameter,
once per SOLVER.CLIP_GRADIENTS setting: none, CLIP_TYPE 'norm' and 'value' (Detectron2's
per-parameter clippers), and 'full_model' (the same norm over all trained parameters
together: Detectron2's global clipper, which its yacs config does not reach, installed
as maybe_add_gradient_clipping installs the per-parameter one).

The same module and gradients also step under torchvision's detection reference recipe
(references/detection/train.py with its defaults: SGD over the parameters that require
gradients, weight decay on all of them, norms included (--norm-weight-decay unset);
LinearLR warmup from 1/1000 over the first epoch's iterations but one, stepped per
iteration, then MultiStepLR stepped per epoch), with epochs of TORCHVISION_EPOCH
iterations: `torchvision/lr` and `torchvision/final/i`.

Stored: `names` (Detectron2's) with `ours` (the path in our parameter tree), `initial/i`
each parameter, `grads/i` [N, ...] its gradient at each iteration (zeros where frozen:
Detectron2 never computes them), `trainable` [P] bool; the solver settings; per clip
setting `<kind>/lr` [N] and `<kind>/final/i` each parameter after N iterations.
"""

import pathlib

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.solver import build_lr_scheduler
from detectron2.solver import build_optimizer
from detectron2.solver.build import _generate_optimizer_class_with_gradient_clipping
from torch import nn

OUT = pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'detectron2_optimizer.npz'
SOLVER = dict(BASE_LR=0.02, MOMENTUM=0.9, WEIGHT_DECAY=1e-4, WEIGHT_DECAY_NORM=0.0,
              BIAS_LR_FACTOR=1.0, WARMUP_FACTOR=1e-3, WARMUP_ITERS=8, STEPS=(14,),
              GAMMA=0.1, MAX_ITER=20)
TORCHVISION_EPOCH, TORCHVISION_LR_STEPS = 10, (1,)  # a decay after the first epoch
CLIPS = {'none': None, 'norm': ('norm', 1.0), 'value': ('value', 0.05),
         'full_model': ('full_model', 2.0)}
# (Detectron2 module path, module, our path of its weight / bias, frozen).
MODULES = (
    ('backbone.bottom_up.stem.conv1', nn.Conv2d(3, 4, 3, bias=False),
     'backbone/stem/conv1/kernel', None, True),
    ('backbone.bottom_up.stem.conv1.norm', nn.GroupNorm(2, 4),
     'backbone/stem/bn1/scale', 'backbone/stem/bn1/bias', True),
    ('backbone.bottom_up.res2.0.conv1', nn.Conv2d(4, 4, 1, bias=False),
     'backbone/res2/block0/conv1/kernel', None, True),
    ('backbone.bottom_up.res3.0.conv1', nn.Conv2d(4, 6, 1, bias=False),
     'backbone/res3/block0/conv1/kernel', None, False),
    ('backbone.bottom_up.res3.0.conv1.norm', nn.GroupNorm(2, 6),
     'backbone/res3/block0/bn1/scale', 'backbone/res3/block0/bn1/bias', False),
    ('backbone.bottom_up.res3.0.shortcut.norm', nn.GroupNorm(2, 6),
     'backbone/res3/block0/downsample_bn/scale', 'backbone/res3/block0/downsample_bn/bias',
     False),
    ('backbone.fpn_lateral3', nn.Conv2d(6, 8, 1), 'fpn/lateral3/kernel', 'fpn/lateral3/bias',
     False),
    ('roi_heads.box_head.fc1', nn.Linear(12, 5), 'box_head/fc1/kernel', 'box_head/fc1/bias',
     False),
)


def _model() -> nn.Module:
  model = nn.Module()
  for path, module, _, _, frozen in MODULES:
    parent = model
    *parents, name = path.split('.')
    for part in parents:
      if not hasattr(parent, part):
        parent.add_module(part, nn.Module())
      parent = getattr(parent, part)
    parent.add_module(name, module)
    for p in module.parameters(recurse=False):
      p.requires_grad_(not frozen)
  return model


def _parameters(model):
  """[(Detectron2 name, parameter, our path)] in MODULES order."""
  modules = dict(model.named_modules())
  out = []
  for path, _, weight, bias, _ in MODULES:
    module = modules[path]
    out.append((f'{path}.weight', module.weight, weight))
    if bias is not None:
      out.append((f'{path}.bias', module.bias, bias))
  return out


def _model_at(initial) -> tuple[nn.Module, list]:
  """A fresh module holding `initial`, and its `_parameters`."""
  model = _model()
  parameters = _parameters(model)
  with torch.no_grad():
    for (_, p, _), value in zip(parameters, initial):
      p.copy_(torch.from_numpy(value))
  return model, parameters


def _step(parameters, grads, iteration: int) -> None:
  """Gives each trained parameter its gradient of `iteration`."""
  for (_, p, _), g in zip(parameters, grads):
    if p.requires_grad:
      p.grad = torch.from_numpy(g[iteration].copy())


def _run(kind: str, initial, grads) -> dict:
  cfg = get_cfg()
  for key, value in SOLVER.items():
    setattr(cfg.SOLVER, key, value)
  clip = CLIPS[kind]
  if clip and clip[0] != 'full_model':
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE, cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip
  model, parameters = _model_at(initial)
  optimizer = build_optimizer(cfg, model)
  if clip and clip[0] == 'full_model':
    optimizer.__class__ = _generate_optimizer_class_with_gradient_clipping(
        type(optimizer),
        global_clipper=lambda ps: torch.nn.utils.clip_grad_norm_(list(ps), clip[1]))
  scheduler = build_lr_scheduler(cfg, optimizer)
  lrs = []
  for iteration in range(SOLVER['MAX_ITER']):
    lrs.append(optimizer.param_groups[0]['lr'])
    optimizer.zero_grad()
    _step(parameters, grads, iteration)
    optimizer.step()
    scheduler.step()
  out = {f'{kind}/lr': np.array(lrs)}
  out.update({f'{kind}/final/{i}': p.detach().numpy().copy()
              for i, (_, p, _) in enumerate(parameters)})
  return out


def _run_torchvision(initial, grads) -> dict:
  model, parameters = _model_at(initial)
  optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                              lr=SOLVER['BASE_LR'], momentum=SOLVER['MOMENTUM'],
                              weight_decay=SOLVER['WEIGHT_DECAY'])
  epochs = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(TORCHVISION_LR_STEPS),
                                                gamma=SOLVER['GAMMA'])
  lrs = []
  for iteration in range(SOLVER['MAX_ITER']):
    epoch, within = divmod(iteration, TORCHVISION_EPOCH)
    if within == 0 and epoch == 0:  # train_one_epoch's warmup, epoch 0 only
      warmup = torch.optim.lr_scheduler.LinearLR(
          optimizer, start_factor=SOLVER['WARMUP_FACTOR'],
          total_iters=min(1000, TORCHVISION_EPOCH - 1))
    lrs.append(optimizer.param_groups[0]['lr'])
    optimizer.zero_grad()
    _step(parameters, grads, iteration)
    optimizer.step()
    if epoch == 0:
      warmup.step()
    if within == TORCHVISION_EPOCH - 1:
      epochs.step()
  out = {'torchvision/lr': np.array(lrs)}
  out.update({f'torchvision/final/{i}': p.detach().numpy().copy()
              for i, (_, p, _) in enumerate(parameters)})
  return out


def main():
  rng = np.random.default_rng(0)
  parameters = _parameters(_model())
  initial = [rng.normal(size=tuple(p.shape)).astype(np.float32) for _, p, _ in parameters]
  # Gradient scales from 0.01 to 3 per parameter, so the clippers clip some and not others.
  scales = np.geomspace(0.01, 3.0, len(parameters))
  grads = [(s * rng.normal(size=(SOLVER['MAX_ITER'],) + v.shape)).astype(np.float32)
           * p.requires_grad for s, v, (_, p, _) in zip(scales, initial, parameters)]
  arrays = dict(names=np.array([n for n, _, _ in parameters]),
                ours=np.array([o for _, _, o in parameters]),
                trainable=np.array([p.requires_grad for _, p, _ in parameters]),
                **{f'solver_{k.lower()}': np.array(v) for k, v in SOLVER.items()},
                **{f'clip_{k}': np.array(v[1] if v else 0.0) for k, v in CLIPS.items()})
  arrays.update({f'initial/{i}': v for i, v in enumerate(initial)})
  arrays.update({f'grads/{i}': g for i, g in enumerate(grads)})
  for kind in CLIPS:
    arrays.update(_run(kind, initial, grads))
  arrays.update(_run_torchvision(initial, grads), torchvision_epoch=np.array(TORCHVISION_EPOCH),
                torchvision_lr_steps=np.array(TORCHVISION_LR_STEPS))
  np.savez_compressed(OUT, **arrays)
  print(f'{len(parameters)} parameters; wrote {OUT} ({OUT.stat().st_size} bytes)')


if __name__ == '__main__':
  main()
