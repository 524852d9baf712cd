"""Detectron2 -> our variables: recorded outputs of Detectron2's own Mask R-CNN parts.

tests/fixtures/detectron2_{r50,x101}_fpn.npz hold the outputs of Detectron2's
GeneralizedRCNN (reduced widths, seeded weights, float64; see
tests/tools/record_detectron2_convert.py): its FPN levels, RPN head, box head and mask
head on given boxes. The weights come in the files Detectron2 writes (a model-zoo style
.pkl and a DetectionCheckpointer .pth), read here without torch, and are checked
against the seeded arrays regenerated from the recorded names, shapes and seed.
"""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax import convert
from maskrcnn_jax.convert import detectron2_weights
from maskrcnn_jax.model import fpn
from maskrcnn_jax.model import poolers
from maskrcnn_jax.model import resnet
from maskrcnn_jax.model import roi_heads
from maskrcnn_jax.model import rpn
from tests.conftest import FIXTURES
from tests.conftest import REPO_ROOT
from tests.tools import seeded_weights

REL_TOL = 1e-4


def _names_and_shapes(names, shapes):
  return [(str(n), tuple(int(s) for s in shape if s)) for n, shape in zip(names, shapes)]


def _load(name):
  data = np.load(FIXTURES / f'detectron2_{name}_fpn.npz')
  sizes = dict(item.split('=', 1) for item in data['config'])
  weights = seeded_weights.seeded_state_dict(
      _names_and_shapes(data['names'], data['shapes']), int(data['seed']))
  return data, sizes, weights


def _close(ours, theirs, what):
  ours = np.asarray(ours, np.float64)
  assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
  error = np.abs(ours - theirs).max() / np.abs(theirs).max()
  assert error < REL_TOL, (what, error)


def _check_outputs(data, sizes, variables):
  """Runs our parts with `variables` and compares every recorded Detectron2 output."""
  num_classes = int(sizes['num_classes'])
  groups = int(sizes['groups'])
  stem = int(sizes['stem'])
  # Detectron2's WIDTH_PER_GROUP is absolute; ours is at base width 64 (torchvision's).
  width_per_group = int(sizes['width_per_group']) * 64 // stem
  body = resnet.ResNet(depth=int(sizes['depth']), base_width=stem, groups=groups,
                       width_per_group=width_per_group,
                       stride_in_1x1=sizes['stride_in_1x1'] == 'True',
                       norm='group_norm' if sizes.get('norm') == 'GN' else 'frozen_bn')
  pyramid = fpn.FPN(channels=int(sizes['fpn']))
  rpn_head = rpn.RPNHead(num_anchors=3)
  box_pooler, mask_pooler = poolers.RoIPooler(7), poolers.RoIPooler(14)
  box_head = roi_heads.BoxHead(num_classes=num_classes, fc_dim=int(sizes['fc_dim']))
  mask_head = roi_heads.MaskHead(num_classes=num_classes, conv_dim=int(sizes['conv_dim']))
  # Detectron2 normalizes BGR by its PIXEL_MEAN / PIXEL_STD; the converted stem takes RGB.
  mean_rgb = np.array(eval(sizes['pixel_mean_bgr'])[::-1], np.float32)  # pylint: disable=eval-used
  std_rgb = np.array(eval(sizes['pixel_std_bgr'])[::-1], np.float32)  # pylint: disable=eval-used
  images = ((data['image'].astype(np.float32) - mean_rgb) / std_rgb)[None]
  boxes = jnp.asarray(data['boxes'])[None]

  def sub(name):
    return {c: tree[name] for c, tree in variables.items() if name in tree}

  @jax.jit
  def forward(variables, images, boxes):
    features = pyramid.apply(sub('fpn'), body.apply(sub('backbone'), images))
    levels = [features[f'p{l}'] for l in range(2, 7)]
    objectness, deltas = rpn_head.apply(sub('rpn'), levels)
    class_logits, box_deltas = box_head.apply(sub('box_head'), box_pooler(levels[:4], boxes))
    mask_logits = mask_head.apply(sub('mask_head'), mask_pooler(levels[:4], boxes))
    return features, objectness, deltas, class_logits, box_deltas, mask_logits

  variables = jax.tree.map(jnp.asarray, variables)
  features, objectness, deltas, class_logits, box_deltas, mask_logits = forward(
      variables, images, boxes)
  for level in range(2, 7):
    _close(features[f'p{level}'], data[f'p{level}'], f'p{level}')
    _close(objectness[level - 2][0], data[f'objectness_{level}'], f'objectness_{level}')
    _close(deltas[level - 2][0], data[f'deltas_{level}'], f'deltas_{level}')
  theirs = data['class_logits']  # background last
  _close(class_logits[0], np.concatenate([theirs[:, -1:], theirs[:, :-1]], 1), 'class_logits')
  _close(box_deltas[0, :, 1:], data['box_deltas'], 'box_deltas')
  np.testing.assert_array_equal(box_deltas[0, :, 0], 0.0)  # background: no regressor
  _close(mask_logits[0, ..., 1:], data['mask_logits'], 'mask_logits')


def test_r50_zoo_pkl_matches_recorded_detectron2():
  data, sizes, weights = _load('r50')
  assert sizes['stride_in_1x1'] == 'True' and sizes['input_format'] == 'BGR'
  path = FIXTURES / 'detectron2_r50_fpn.pkl'
  state_dict = detectron2_weights.load_detectron2_state_dict(path)
  assert set(state_dict) == set(weights)
  for key, value in weights.items():
    np.testing.assert_array_equal(state_dict[key], value, err_msg=key)
  _check_outputs(data, sizes, detectron2_weights.from_detectron2(str(path)))


def test_x101_checkpointer_pth_matches_recorded_detectron2():
  data, sizes, weights = _load('x101')
  assert sizes['stride_in_1x1'] == 'False' and int(sizes['groups']) > 1
  path = FIXTURES / 'detectron2_x101_fpn.pth'
  state_dict = detectron2_weights.load_detectron2_state_dict(path)
  assert set(state_dict) == set(weights)
  for key, value in weights.items():
    np.testing.assert_array_equal(state_dict[key], value, err_msg=key)
  _check_outputs(data, sizes, detectron2_weights.from_detectron2(path))


def test_r18_group_norm_state_dict_matches_recorded_detectron2():
  """Basic blocks and GroupNorm (RESNETS.NORM 'GN'): its weight and bias are trained
  params, not frozen statistics."""
  data, sizes, weights = _load('r18_gn')
  assert sizes['norm'] == 'GN' and sizes['depth'] == '18'
  variables = detectron2_weights.from_detectron2(weights)
  body = variables['params']['backbone']
  np.testing.assert_array_equal(body['res3']['block0']['bn2']['scale'],
                                weights['backbone.bottom_up.res3.0.conv2.norm.weight'])
  np.testing.assert_array_equal(body['stem']['bn1']['bias'],
                                weights['backbone.bottom_up.stem.conv1.norm.bias'])
  assert 'conv3' not in body['res2']['block0']
  assert not jax.tree.leaves(variables.get('batch_stats', {}))
  _check_outputs(data, sizes, variables)


def _shapes(tree):
  return jax.tree.map(lambda a: tuple(a.shape), tree)


def test_full_x101_32x8d_keys_cover_our_model():
  """Every key of Detectron2's mask_rcnn_X_101_32x8d_FPN_3x converts to our X101 tree."""
  from maskrcnn_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from maskrcnn_jax.model import mask_rcnn  # pylint: disable=import-outside-toplevel
  data = np.load(FIXTURES / 'detectron2_x101_fpn.npz')
  state_dict = {name: np.broadcast_to(np.float32(0), shape) for name, shape in
                _names_and_shapes(data['full_names'], data['full_shapes'])}
  variables = detectron2_weights.from_detectron2(state_dict)
  config = config_lib.load_config_file(
      REPO_ROOT / 'configs' / 'detectron2'
      / 'mask_rcnn_X_101_32x8d_FPN_3x.py')
  model = mask_rcnn.MaskRCNN(config.model)
  height, width = 64, 64
  expected = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, height, width, 3), jnp.uint8),
      jnp.array([[height, width, height, width, 1.0]], jnp.float32)))
  assert _shapes(variables) == _shapes(expected)


def test_state_dict_errors_name_the_keys():
  _, _, weights = _load('r50')
  extra = {**weights, 'roi_heads.keypoint_head.fcn1.weight': np.zeros((1,), np.float32)}
  with pytest.raises(KeyError, match='keypoint_head'):
    detectron2_weights.from_detectron2(extra)
  missing = dict(weights)
  del missing['backbone.bottom_up.res3.0.conv2.norm.running_var']
  with pytest.raises(KeyError, match=r'res3\.0\.conv2\.norm\.running_var'):
    detectron2_weights.from_detectron2(missing)
  # Buffers without weights are dropped; a {'model': ...} checkpoint dict is unwrapped.
  variables = detectron2_weights.from_detectron2(
      {'model': {**weights, 'pixel_mean': np.zeros((3, 1, 1), np.float32)}})
  assert set(variables['params']) == {'backbone', 'fpn', 'rpn', 'box_head', 'mask_head'}


def test_refuses_other_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='missing.pkl'):
    detectron2_weights.from_detectron2(str(tmp_path / 'missing.pkl'))
  path = tmp_path / 'weights.npz'
  path.write_bytes(b'')
  with pytest.raises(ValueError, match=r'\.pkl or \.pth'):
    detectron2_weights.from_detectron2(str(path))
  path = tmp_path / 'not_weights.pkl'
  path.write_bytes(pickle.dumps({'model': 'a string, not arrays'}))
  with pytest.raises(ValueError, match='holds no state dict'):
    detectron2_weights.from_detectron2(str(path))


def test_convert_weights_script_writes_a_restorable_checkpoint(tmp_path, monkeypatch):
  import runpy  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from maskrcnn_jax import checkpoint  # pylint: disable=import-outside-toplevel
  source = FIXTURES / 'detectron2_r50_fpn.pkl'
  monkeypatch.setattr(sys, 'argv', ['convert_weights.py', '--kind', 'detectron2', str(source),
                                    str(tmp_path / 'out')])
  runpy.run_path(str(REPO_ROOT / 'scripts' / 'convert_weights.py'), run_name='__main__')
  restored = checkpoint.restore_variables(str(tmp_path / "out"))
  expected = convert.from_detectron2(str(source))
  jax.tree.map(np.testing.assert_array_equal, restored, expected)
