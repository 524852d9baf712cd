"""torchvision state dicts -> our variables ({'params': ..., 'batch_stats': ...}).

`from_torchvision` converts a `maskrcnn_resnet50_fpn` or `keypointrcnn_resnet50_fpn`
state dict, `from_torchvision_resnet` an ImageNet ResNet body. The parameter trees these
produce are documented in model/resnet.py, model/fpn.py, model/rpn.py,
model/roi_heads.py and model/keypoint_head.py. `load_torch_state_dict` reads a .pth
without torch (safe_pickle.py).
"""

import os
from typing import Mapping

import numpy as np

from maskrcnn_jax.convert import kinds
from maskrcnn_jax.convert import safe_pickle
from maskrcnn_jax.convert import tables as tables_lib

_BN_STATS = (('weight', 'scale'), ('bias', 'bias'), ('running_mean', 'mean'),
             ('running_var', 'var'))


def _frozen_bn_rows(torch_name: str, path: str) -> list:
  """A torch BatchNorm2d / FrozenBatchNorm2d -> our FrozenBatchNorm in 'batch_stats'."""
  return [(f'{torch_name}.{t}', 'batch_stats', f'{path}/{ours}', tables_lib.identity)
          for t, ours in _BN_STATS]


def resnet_table(state_dict: Mapping[str, np.ndarray], prefix: str) -> list:
  """Rows for a torchvision ResNet body (frozen batch norm); depth read from the keys."""
  rows = [('conv1.weight', 'params', 'stem/conv1/kernel', tables_lib.conv_kernel)]
  rows += _frozen_bn_rows('bn1', 'stem/bn1')
  bottleneck = f'{prefix}layer1.0.conv3.weight' in state_dict
  for stage in range(1, 5):
    block = 0
    while f'{prefix}layer{stage}.{block}.conv1.weight' in state_dict:
      torch_block, ours = f'layer{stage}.{block}', f'res{stage + 1}/block{block}'
      for k in (1, 2, 3) if bottleneck else (1, 2):
        rows.append((f'{torch_block}.conv{k}.weight', 'params', f'{ours}/conv{k}/kernel',
                     tables_lib.conv_kernel))
        rows += _frozen_bn_rows(f'{torch_block}.bn{k}', f'{ours}/bn{k}')
      if f'{prefix}{torch_block}.downsample.0.weight' in state_dict:
        rows.append((f'{torch_block}.downsample.0.weight', 'params',
                     f'{ours}/downsample_conv/kernel', tables_lib.conv_kernel))
        rows += _frozen_bn_rows(f'{torch_block}.downsample.1', f'{ours}/downsample_bn')
      block += 1
  return rows


def fpn_table() -> list:
  """Rows for torchvision's FeaturePyramidNetwork over C2..C5."""
  rows = []
  for level in range(2, 6):
    for torch_name, ours in (('inner_blocks', 'lateral'), ('layer_blocks', 'output')):
      key = f'{torch_name}.{level - 2}.0'
      rows.append((f'{key}.weight', 'params', f'{ours}{level}/kernel', tables_lib.conv_kernel))
      rows.append((f'{key}.bias', 'params', f'{ours}{level}/bias', tables_lib.identity))
  return rows


def _conv_rows(torch_name: str, path: str, kernel=tables_lib.conv_kernel) -> list:
  return [(f'{torch_name}.weight', 'params', f'{path}/kernel', kernel),
          (f'{torch_name}.bias', 'params', f'{path}/bias', tables_lib.identity)]


def rpn_table() -> list:
  """Rows for torchvision's RPNHead (under 'rpn.head.') -> `rpn.RPNHead`."""
  return (_conv_rows('conv.0.0', 'conv') + _conv_rows('cls_logits', 'cls_logits')
          + _conv_rows('bbox_pred', 'bbox_pred'))


def box_head_table() -> list:
  """Rows for TwoMLPHead + FastRCNNPredictor (under 'roi_heads.') -> `BoxHead`."""
  return [row for torch_name, ours in (('box_head.fc6', 'fc6'), ('box_head.fc7', 'fc7'),
                                       ('box_predictor.cls_score', 'cls_score'),
                                       ('box_predictor.bbox_pred', 'bbox_pred'))
          for row in _conv_rows(torch_name, ours, kernel=tables_lib.dense_kernel)]


def mask_head_table(num_convs: int = 4) -> list:
  """Rows for MaskRCNNHeads + MaskRCNNPredictor (under 'roi_heads.') -> `MaskHead`."""
  rows = []
  for i in range(1, num_convs + 1):
    rows += _conv_rows(f'mask_head.{i - 1}.0', f'mask_fcn{i}')
  rows += _conv_rows('mask_predictor.conv5_mask', 'conv5_mask', kernel=tables_lib.deconv_kernel)
  rows += _conv_rows('mask_predictor.mask_fcn_logits', 'mask_fcn_logits')
  return rows


def keypoint_head_table(num_convs: int = 8) -> list:
  """Rows for KeypointRCNNHeads + KeypointRCNNPredictor (under 'roi_heads.') -> `KeypointHead`.

  The head is a Sequential of (conv, ReLU) pairs, so conv i (1-based) is entry 2 (i - 1).
  """
  rows = []
  for i in range(1, num_convs + 1):
    rows += _conv_rows(f'keypoint_head.{2 * (i - 1)}', f'keypoint_fcn{i}')
  rows += _conv_rows('keypoint_predictor.kps_score_lowres', 'kps_score_lowres',
                     kernel=tables_lib.deconv_kernel)
  return rows


_ROI_HEAD_PARTS = {'box_head': ('box_head.', 'box_predictor.'),
                   'mask_head': ('mask_head.', 'mask_predictor.'),
                   'keypoint_head': ('keypoint_head.', 'keypoint_predictor.')}


def from_torchvision(state_dict: Mapping[str, np.ndarray]) -> dict[str, dict]:
  """A torchvision `maskrcnn_resnet50_fpn` or `keypointrcnn_resnet50_fpn` state dict ->
  `mask_rcnn.MaskRCNN` variables.

  The heads present in the state dict are converted (a Keypoint R-CNN has no mask head:
  its config sets model.mask_head.enabled False and model.keypoint_head.enabled True).
  Every key must be converted (num_batches_tracked counters aside): a key under no known
  prefix, or missing from one, is an error naming it. Another kind of state dict (an
  ImageNet ResNet, a Detectron2 model) is a ValueError naming its kind.
  """
  kinds.check_kind(state_dict, 'maskrcnn')
  prefixes = ('backbone.body.', 'backbone.fpn.', 'rpn.head.', 'roi_heads.')
  stray = [k for k in state_dict if not k.startswith(prefixes)
           and not k.endswith('num_batches_tracked')]
  if stray:
    raise KeyError('cannot convert the state dict: unexpected keys '
                   f'{tables_lib.key_list(stray)}')
  convs = lambda head: {k.split('.')[2] for k in state_dict
                        if k.startswith(f'roi_heads.{head}.') and k.endswith('.weight')}
  tables = {'box_head': box_head_table()}
  if convs('mask_head'):
    tables['mask_head'] = mask_head_table(len(convs('mask_head')))
  if convs('keypoint_head'):
    tables['keypoint_head'] = keypoint_head_table(len(convs('keypoint_head')))
  trees = {
      'backbone': convert_resnet(state_dict, 'backbone.body.'),
      'fpn': convert_fpn(state_dict, 'backbone.fpn.'),
      'rpn': tables_lib.convert_table(state_dict, 'rpn.head.', rpn_table()),
  }
  for head, table in tables.items():
    others = tuple(p for name, parts in _ROI_HEAD_PARTS.items() if name != head
                   for p in parts if name in tables)
    trees[head] = tables_lib.convert_table(state_dict, 'roi_heads.', table, ignore=others)
  return tables_lib.merge_under(trees)


def convert_resnet(state_dict: Mapping[str, np.ndarray], prefix: str) -> dict[str, dict]:
  """A torchvision ResNet body under `prefix` -> `resnet.ResNet` variables.

  Args:
    state_dict: torch key -> array, e.g. a maskrcnn_resnet50_fpn state dict.
    prefix: e.g. 'backbone.body.'.

  Returns:
    {'params': {'stem', 'res2'..'res5'}, 'batch_stats': {same}} for norm='frozen_bn'
    and the depth (18/34/50/101) of the state dict.
  """
  return tables_lib.convert_table(state_dict, prefix, resnet_table(state_dict, prefix))


def convert_fpn(state_dict: Mapping[str, np.ndarray], prefix: str) -> dict[str, dict]:
  """torchvision's FeaturePyramidNetwork under `prefix` -> `fpn.FPN` variables.

  Args:
    state_dict: torch key -> array, e.g. a maskrcnn_resnet50_fpn state dict.
    prefix: e.g. 'backbone.fpn.'.

  Returns:
    {'params': {'lateral2'..'lateral5', 'output2'..'output5'}}.
  """
  return tables_lib.convert_table(state_dict, prefix, fpn_table())


def from_torchvision_resnet(state_dict: Mapping[str, np.ndarray]) -> dict[str, dict]:
  """An ImageNet classification ResNet -> `resnet.ResNet` variables (norm='frozen_bn').

  For torchvision's `resnet{18,34,50,101}-*.pth` (keys conv1.*, bn1.*, layer1.* ..
  layer4.*): the classifier fc.* is dropped and the batch norm statistics become the
  frozen batch norms' arrays. Another kind of state dict (a Mask R-CNN) is a ValueError
  naming its kind.
  """
  kinds.check_kind(state_dict, 'resnet')
  return tables_lib.convert_table(state_dict, '', resnet_table(state_dict, ''), ignore=('fc.',))


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a .pth state dict as NumPy arrays (float tensors as float32), without torch.

  torch.save's zip and legacy formats are read by a restricted unpickler that runs no
  code (safe_pickle.load_weights). The file may hold the state dict itself or a training
  checkpoint holding it under 'model' (torchvision's reference scripts) or 'state_dict'.

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: one line naming the file: not a PyTorch checkpoint, or one without a
      state dict.
  """
  path = os.fspath(path)
  data = safe_pickle.load_weights(path)
  if isinstance(data, Mapping) and not _is_state_dict(data):
    for wrapper in ('model', 'state_dict'):
      if isinstance(data.get(wrapper), Mapping):
        data = data[wrapper]
        break
  if not isinstance(data, Mapping) or not data or not _is_state_dict(data):
    found = (f'a dict with keys {tables_lib.key_list(map(str, data))}'
             if isinstance(data, Mapping) else f'a {type(data).__name__}')
    raise ValueError(f"{path} holds no state dict (a dict of tensors, or one under 'model' or "
                     f"'state_dict'): it holds {found}")
  state_dict = {}
  for key, value in data.items():
    value = np.asarray(value)
    state_dict[key] = value.astype(np.float32) if value.dtype.kind == 'f' else value
  return state_dict


def _is_state_dict(data: Mapping) -> bool:
  """Whether every value of `data` is an array (a tensor read by safe_pickle)."""
  return all(isinstance(value, (np.ndarray, np.generic)) for value in data.values())
