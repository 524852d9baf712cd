"""Detectron2 checkpoints (.pkl model zoo, .pth) -> our variables.

Detectron2's GeneralizedRCNN names its parts differently from torchvision and differs in
four conventions, which the conversion absorbs so that our model computes the same
function:

  * classes: its cls_score has K + 1 outputs with background LAST, and its bbox_pred
    (4K) and mask predictor (K) have no background rows; ours put background at index 0
    with K + 1 rows everywhere, so background moves to the front and gets zero rows.
  * input: its stem sees BGR (INPUT.FORMAT 'BGR', the MSRA models with PIXEL_STD 1);
    ours sees RGB, so the stem kernel's input channels are reversed. The config then
    holds PIXEL_MEAN / PIXEL_STD reversed to RGB (configs/detectron2/*).
  * stride: the MSRA bodies put the stride in the first 1x1 conv (RESNETS.STRIDE_IN_1X1,
    config model.backbone.stride_in_1x1); the kernels themselves convert unchanged.
  * ResNeXt: grouped 3x3 kernels [out, in / groups, 3, 3] are Flax's grouped layout
    once transposed (config model.backbone.groups / width_per_group).

Tables are (Detectron2 key suffix, collection, our path, transform) rows for
`tables_lib.convert_table`, which names every missing or unexpected key.
"""

import os
from typing import Mapping

import numpy as np

from maskrcnn_jax.convert import kinds
from maskrcnn_jax.convert import safe_pickle
from maskrcnn_jax.convert import tables as tables_lib

# Buffers some Detectron2 versions save that hold no weights (anchors, pixel statistics
# the config carries instead).
_IGNORED = ('pixel_mean', 'pixel_std', 'proposal_generator.anchor_generator.')

_BN_STATS = (('weight', 'scale'), ('bias', 'bias'), ('running_mean', 'mean'),
             ('running_var', 'var'))


def _norm_rows(name: str, norm_path: str, frozen: bool) -> list:
  """A Detectron2 `.norm`: FrozenBatchNorm2d (`frozen`: it has running statistics) -> our
  frozen bn in 'batch_stats'; GroupNorm (NORM 'GN': weight and bias only) -> our
  GroupNorm's params."""
  if frozen:
    return [(f'{name}.{theirs}', 'batch_stats', f'{norm_path}/{ours}', tables_lib.identity)
            for theirs, ours in _BN_STATS]
  return [(f'{name}.weight', 'params', f'{norm_path}/scale', tables_lib.identity),
          (f'{name}.bias', 'params', f'{norm_path}/bias', tables_lib.identity)]


def _conv_norm_rows(name: str, path: str, norm_path: str, frozen: bool) -> list:
  """A Detectron2 Conv2d with a `.norm` -> our conv + norm."""
  return ([(f'{name}.weight', 'params', f'{path}/kernel', tables_lib.conv_kernel)]
          + _norm_rows(f'{name}.norm', norm_path, frozen))


def _bgr_to_rgb_kernel(weight: np.ndarray) -> np.ndarray:
  """Stem conv [out, 3 (BGR), kh, kw] -> Flax kernel [kh, kw, 3 (RGB), out]."""
  return tables_lib.conv_kernel(weight[:, ::-1])


def resnet_table(state_dict: Mapping[str, np.ndarray], prefix: str,
                 input_format: str = 'BGR') -> list:
  """Rows for a Detectron2 ResNet / ResNeXt body (`backbone.bottom_up.`), depth from the keys.

  Bottleneck bodies (R50, R101, X101: what the Mask R-CNN zoo holds) and basic-block ones
  (R18, R34: no conv3), with frozen batch norm or GroupNorm (RESNETS.NORM 'GN').
  """
  stem_kernel = _bgr_to_rgb_kernel if input_format == 'BGR' else tables_lib.conv_kernel
  rows = [('stem.conv1.weight', 'params', 'stem/conv1/kernel', stem_kernel)]
  frozen = f'{prefix}stem.conv1.norm.running_mean' in state_dict  # else GroupNorm
  rows += _norm_rows('stem.conv1.norm', 'stem/bn1', frozen)
  for stage in range(2, 6):
    block = 0
    while f'{prefix}res{stage}.{block}.conv1.weight' in state_dict:
      theirs, ours = f'res{stage}.{block}', f'res{stage}/block{block}'
      for k in (1, 2, 3):
        if f'{prefix}{theirs}.conv{k}.weight' in state_dict:
          rows += _conv_norm_rows(f'{theirs}.conv{k}', f'{ours}/conv{k}', f'{ours}/bn{k}',
                                  frozen)
      if f'{prefix}{theirs}.shortcut.weight' in state_dict:
        rows += _conv_norm_rows(f'{theirs}.shortcut', f'{ours}/downsample_conv',
                                f'{ours}/downsample_bn', frozen)
      block += 1
  return rows


def fpn_table() -> list:
  """Rows for Detectron2's FPN convs (`backbone.fpn_lateral{l}`, `fpn_output{l}`)."""
  return [row for level in range(2, 6)
          for theirs, ours in (('fpn_lateral', 'lateral'), ('fpn_output', 'output'))
          for row in _conv_rows(f'{theirs}{level}', f'{ours}{level}')]


def _conv_rows(name: str, path: str, kernel=tables_lib.conv_kernel, bias=tables_lib.identity
               ) -> list:
  return [(f'{name}.weight', 'params', f'{path}/kernel', kernel),
          (f'{name}.bias', 'params', f'{path}/bias', bias)]


def rpn_table() -> list:
  """Rows for StandardRPNHead (`proposal_generator.rpn_head.`) -> `rpn.RPNHead`."""
  return (_conv_rows('conv', 'conv') + _conv_rows('objectness_logits', 'cls_logits')
          + _conv_rows('anchor_deltas', 'bbox_pred'))


def _background_last_to_first(value: np.ndarray) -> np.ndarray:
  """cls_score rows [K + 1, ...] with background last -> background first."""
  return np.concatenate([value[-1:], value[:-1]])


def _prepend_zero_rows(rows: int):
  """Adds `rows` zero rows in front: the background class our layout has and theirs lacks."""
  def transform(value: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros((rows,) + value.shape[1:], value.dtype), value])
  return transform


def box_head_table() -> list:
  """Rows for FastRCNNConvFCHead + FastRCNNOutputLayers (`roi_heads.`) -> `BoxHead`."""
  def dense_background_first(weight):
    return tables_lib.dense_kernel(_background_last_to_first(weight))
  def dense_with_background(weight):
    return tables_lib.dense_kernel(_prepend_zero_rows(4)(weight))
  return (_conv_rows('box_head.fc1', 'fc6', kernel=tables_lib.dense_kernel)
          + _conv_rows('box_head.fc2', 'fc7', kernel=tables_lib.dense_kernel)
          + _conv_rows('box_predictor.cls_score', 'cls_score', kernel=dense_background_first,
                       bias=_background_last_to_first)
          + _conv_rows('box_predictor.bbox_pred', 'bbox_pred', kernel=dense_with_background,
                       bias=_prepend_zero_rows(4)))


def mask_head_table(num_convs: int = 4, class_agnostic: bool = False) -> list:
  """Rows for MaskRCNNConvUpsampleHead (`roi_heads.mask_head.`) -> `MaskHead`."""
  rows = []
  for i in range(1, num_convs + 1):
    rows += _conv_rows(f'mask_fcn{i}', f'mask_fcn{i}')
  rows += _conv_rows('deconv', 'conv5_mask', kernel=tables_lib.deconv_kernel)
  if class_agnostic:
    rows += _conv_rows('predictor', 'mask_fcn_logits')
  else:
    rows += _conv_rows('predictor', 'mask_fcn_logits',
                       kernel=lambda w: tables_lib.conv_kernel(_prepend_zero_rows(1)(w)),
                       bias=_prepend_zero_rows(1))
  return rows


_PREFIXES = ('backbone.bottom_up.', 'backbone.fpn_', 'proposal_generator.rpn_head.',
             'roi_heads.box_head.', 'roi_heads.box_predictor.', 'roi_heads.mask_head.')


def load_detectron2_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The model state dict of a Detectron2 checkpoint: a zoo .pkl or a Checkpointer .pth.

  Both are read without running code (safe_pickle); a file holding anything but arrays,
  dicts, lists, strings and numbers is refused with a ValueError.
  """
  path = os.fspath(path)
  if path.endswith('.pkl'):
    data = safe_pickle.load_pkl(path)
  elif path.endswith(('.pth', '.pt')):
    data = safe_pickle.load_pth(path)
  else:
    raise ValueError(f'{path}: expected a Detectron2 .pkl or .pth checkpoint')
  if isinstance(data, Mapping) and isinstance(data.get('model'), Mapping):
    data = data['model']  # {'model': ..., '__author__' | 'iteration' | 'optimizer': ...}
  if not isinstance(data, Mapping) or not all(
      isinstance(v, (np.ndarray, np.generic)) for v in data.values()):
    raise ValueError(f'{path}: holds no state dict (a dict of arrays, or one under "model")')
  return {key: np.asarray(value) for key, value in data.items()}


def from_detectron2(path_or_state_dict: str | os.PathLike | Mapping[str, np.ndarray],
                    input_format: str = 'BGR') -> dict[str, dict]:
  """A Detectron2 Mask R-CNN (R50/R101/X101-FPN) checkpoint -> `mask_rcnn.MaskRCNN` variables.

  Args:
    path_or_state_dict: a model-zoo .pkl, a Detectron2 .pth, or a state dict
      (key -> array; a {'model': state dict} checkpoint dict also).
    input_format: Detectron2's INPUT.FORMAT of the checkpoint ('BGR' for the zoo's
      models); with 'BGR' the stem is converted to take RGB.

  Returns:
    {'params': ..., 'batch_stats': ...} for a config with background-first classes,
    `model.backbone.stride_in_1x1`, `groups`, `width_per_group` and pixel statistics as
    in configs/detectron2/ (they are not in the checkpoint).

  Raises:
    KeyError: naming unconverted or missing keys.
    ValueError: for an unreadable file, another kind of state dict (a torchvision
      one), an unknown input_format or a class-agnostic box regressor (which our box
      head does not have).
  """
  if input_format not in ('BGR', 'RGB'):
    raise ValueError(f"input_format must be 'BGR' or 'RGB'; got {input_format!r}")
  if isinstance(path_or_state_dict, (str, os.PathLike)):
    source = os.fspath(path_or_state_dict)
    state_dict = load_detectron2_state_dict(path_or_state_dict)
  else:
    source, state_dict = 'the state dict', path_or_state_dict
    if isinstance(state_dict.get('model'), Mapping):
      state_dict = state_dict['model']
  kinds.check_kind(state_dict, 'detectron2', source)
  state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_IGNORED)}
  stray = [k for k in state_dict if not k.startswith(_PREFIXES)
           and not k.endswith('num_batches_tracked')]
  if stray:
    raise KeyError('cannot convert the Detectron2 state dict: unexpected keys '
                   f'{tables_lib.key_list(stray)}')
  cls_score = state_dict.get('roi_heads.box_predictor.cls_score.weight')
  num_classes = cls_score.shape[0] - 1 if cls_score is not None else 0
  bbox_pred = state_dict.get('roi_heads.box_predictor.bbox_pred.weight')
  if bbox_pred is not None and num_classes > 1 and bbox_pred.shape[0] == 4:
    raise ValueError('class-agnostic box regression (MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG)'
                     ' is not supported')
  predictor = state_dict.get('roi_heads.mask_head.predictor.weight')
  class_agnostic = predictor is not None and predictor.shape[0] == 1 and num_classes > 1
  num_convs = len({k.split('.')[2] for k in state_dict
                   if k.startswith('roi_heads.mask_head.mask_fcn')})
  body = 'backbone.bottom_up.'
  return tables_lib.merge_under({
      'backbone': tables_lib.convert_table(state_dict, body,
                                           resnet_table(state_dict, body, input_format)),
      'fpn': tables_lib.convert_table(state_dict, 'backbone.', fpn_table(),
                                      ignore=('bottom_up.',)),
      'rpn': tables_lib.convert_table(state_dict, 'proposal_generator.rpn_head.', rpn_table()),
      'box_head': tables_lib.convert_table(state_dict, 'roi_heads.', box_head_table(),
                                           ignore=('mask_head.',)),
      'mask_head': tables_lib.convert_table(state_dict, 'roi_heads.mask_head.',
                                            mask_head_table(num_convs, class_agnostic)),
  })


def from_detectron2_resnet(path_or_state_dict: str | os.PathLike | Mapping[str, np.ndarray],
                           input_format: str = 'BGR') -> dict[str, dict]:
  """Only the body (`backbone.bottom_up.*`) of a Detectron2 checkpoint -> `resnet.ResNet`."""
  if isinstance(path_or_state_dict, (str, os.PathLike)):
    source = os.fspath(path_or_state_dict)
    state_dict = load_detectron2_state_dict(path_or_state_dict)
  else:
    source, state_dict = 'the state dict', path_or_state_dict
  kinds.check_kind(state_dict, 'detectron2', source)
  body = 'backbone.bottom_up.'
  sub = {k: v for k, v in state_dict.items() if k.startswith(body)}
  return tables_lib.convert_table(sub, body, resnet_table(sub, body, input_format))
