"""torchvision -> our variables: the recorded ResNet-50 + FPN outputs, key handling.

tests/fixtures/torchvision_backbone.npz holds the outputs of torchvision's
maskrcnn_resnet50_fpn backbone filled with seeded weights (see
tests/tools/record_torchvision_backbone.py); the weights are regenerated here without
torch from the recorded names, shapes and seed. .pth files are written by hand in both
torch.save formats (tests/convert/torch_files.py) and read without torch, as
scripts/convert_weights.py reads them.
"""

import os
import runpy
import sys

import jax
import numpy as np
import pytest

from maskrcnn_jax import checkpoint
from maskrcnn_jax import cli
from maskrcnn_jax import convert
from maskrcnn_jax.convert import torchvision_weights
from maskrcnn_jax.model import fpn
from maskrcnn_jax.model import resnet
from tests.conftest import FIXTURES
from tests.conftest import REPO_ROOT
from tests.convert import torch_files
from tests.tools import seeded_weights

# torchvision resnet{depth}(): all parameters, the fc layer included.
TORCHVISION_PARAMETERS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160}


@pytest.fixture(scope='module')
def recorded():
  data = np.load(FIXTURES / 'torchvision_backbone.npz')
  names_and_shapes = [(str(name), tuple(int(s) for s in shape if s))
                      for name, shape in zip(data['names'], data['shapes'])]
  state_dict = seeded_weights.seeded_state_dict(names_and_shapes, int(data['seed']))
  return data, state_dict


def _shapes(tree):
  return jax.tree.map(lambda a: tuple(a.shape), tree)


def test_backbone_matches_recorded_torchvision(recorded):
  data, state_dict = recorded
  images = data['images']
  backbone = resnet.ResNet(depth=50, frozen_bn_eps=float(data['frozen_bn_eps']))
  pyramid = fpn.FPN(channels=256)
  backbone_variables = torchvision_weights.convert_resnet(state_dict, 'backbone.body.')
  fpn_variables = torchvision_weights.convert_fpn(state_dict, 'backbone.fpn.')

  def init():
    features, backbone_init = backbone.init_with_output(jax.random.PRNGKey(0), images)
    return backbone_init, pyramid.init(jax.random.PRNGKey(0), features)

  backbone_init, fpn_init = jax.eval_shape(init)
  assert _shapes(backbone_variables) == _shapes(backbone_init)
  assert _shapes(fpn_variables) == _shapes(fpn_init)

  @jax.jit
  def forward(backbone_variables, fpn_variables, images):
    features = backbone.apply(backbone_variables, images)
    return {**features, **pyramid.apply(fpn_variables, features)}

  outputs = forward(backbone_variables, fpn_variables, images)
  for key in ('c2', 'c3', 'c4', 'c5', 'p2', 'p3', 'p4', 'p5', 'p6'):
    expected = data[key]  # torchvision in float64, a strided subset of channels
    ours = np.asarray(outputs[key])[..., data[f'channels_{key}']]
    assert ours.shape == expected.shape, key
    error = np.abs(ours - expected).max() / np.abs(expected).max()
    assert error < 1e-4, (key, error)


def _torchvision_resnet_keys(depth):
  """(key, shape) of torchvision's resnet{depth}() state dict, from its definition."""
  blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
  bottleneck = depth >= 50
  expansion = 4 if bottleneck else 1
  batch_norm = lambda name, c: [(f'{name}.{t}', (c,))
                                for t in ('weight', 'bias', 'running_mean', 'running_var')]
  keys = [('conv1.weight', (64, 3, 7, 7))] + batch_norm('bn1', 64)
  channels = 64
  for stage, num_blocks in enumerate(blocks):
    width = 64 * 2**stage
    for b in range(num_blocks):
      name = f'layer{stage + 1}.{b}'
      if bottleneck:
        convs = [(width, channels, 1, 1), (width, width, 3, 3), (4 * width, width, 1, 1)]
      else:
        convs = [(width, channels, 3, 3), (width, width, 3, 3)]
      for k, shape in enumerate(convs, 1):
        keys += [(f'{name}.conv{k}.weight', shape)] + batch_norm(f'{name}.bn{k}', shape[0])
      if b == 0 and (stage > 0 or channels != width * expansion):
        keys += [(f'{name}.downsample.0.weight', (width * expansion, channels, 1, 1))]
        keys += batch_norm(f'{name}.downsample.1', width * expansion)
      channels = width * expansion
  return keys + [('fc.weight', (1000, channels)), ('fc.bias', (1000,))]


@pytest.mark.parametrize('depth', [18, 34, 50, 101])
def test_from_torchvision_resnet_builds_the_backbone_tree(depth):
  keys = _torchvision_resnet_keys(depth)
  trained = [(k, s) for k, s in keys if 'running' not in k]
  assert sum(np.prod(s) for _, s in trained) == TORCHVISION_PARAMETERS[depth]
  state_dict = seeded_weights.seeded_state_dict(keys, seed=depth)
  state_dict.update({k.replace('running_var', 'num_batches_tracked'): np.array(7)
                     for k in state_dict if k.endswith('running_var')})
  variables = convert.from_torchvision_resnet(state_dict)
  expected = jax.eval_shape(resnet.ResNet(depth=depth).init, jax.random.PRNGKey(0),
                            np.zeros((1, 32, 32, 3), np.float32))
  assert _shapes(variables) == _shapes(expected)
  np.testing.assert_array_equal(variables['params']['stem']['conv1']['kernel'][2, 5, 1],
                                state_dict['conv1.weight'][:, 1, 2, 5])
  np.testing.assert_array_equal(variables['batch_stats']['res5']['block0']['bn2']['var'],
                                state_dict['layer4.0.bn2.running_var'])


def test_imagenet_and_detection_body_conversions_agree(recorded):
  _, state_dict = recorded
  prefix = 'backbone.body.'
  imagenet = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  imagenet.update({'fc.weight': np.zeros((1000, 2048), np.float32),
                   'fc.bias': np.zeros(1000, np.float32)})
  ours = convert.from_torchvision_resnet(imagenet)
  reference = torchvision_weights.convert_resnet(state_dict, prefix)
  jax.tree.map(np.testing.assert_array_equal, ours, reference)


def test_missing_and_unexpected_keys_are_named(recorded):
  _, state_dict = recorded
  broken = dict(state_dict)
  del broken['backbone.fpn.layer_blocks.2.0.bias']
  broken['backbone.fpn.extra_blocks.0.weight'] = np.zeros(3, np.float32)
  with pytest.raises(KeyError, match=r'backbone\.fpn\.layer_blocks\.2\.0\.bias.*'
                                     r'backbone\.fpn\.extra_blocks\.0\.weight'):
    torchvision_weights.convert_fpn(broken, 'backbone.fpn.')
  del broken['backbone.body.layer3.0.bn2.running_mean']
  with pytest.raises(KeyError, match=r'backbone\.body\.layer3\.0\.bn2\.running_mean'):
    torchvision_weights.convert_resnet(broken, 'backbone.body.')


def _small_resnet18():
  """resnet18()'s keys with arrays of at most 2 per axis (the conversion reads no shape)."""
  rng = np.random.default_rng(18)
  state_dict = {key: rng.standard_normal([min(s, 2) for s in shape]).astype(np.float32)
                for key, shape in _torchvision_resnet_keys(18)}
  state_dict['bn1.num_batches_tracked'] = np.array(3, np.int64)
  return state_dict


@pytest.mark.parametrize('save', [torch_files.save_zip, torch_files.save_legacy])
@pytest.mark.parametrize('wrapper', [None, 'model', 'state_dict'])
def test_load_torch_state_dict_reads_pth_files_without_torch(tmp_path, monkeypatch, save,
                                                             wrapper):
  monkeypatch.setitem(sys.modules, 'torch', None)  # makes `import torch` fail
  arrays = _small_resnet18()
  arrays['fc.bias'] = arrays['fc.bias'].astype(np.float16)
  saved = torch_files.state_dict_of(arrays)
  if wrapper:  # a training checkpoint: torchvision's reference scripts save 'model'
    saved = {wrapper: saved, 'optimizer': {'state': {}, 'param_groups': []}, 'epoch': 25}
  save(saved, tmp_path / 'resnet18.pth')
  state_dict = convert.load_torch_state_dict(str(tmp_path / 'resnet18.pth'))
  assert list(state_dict) == list(arrays)
  for key, array in arrays.items():
    expected = np.float32 if array.dtype.kind == 'f' else array.dtype
    assert state_dict[key].dtype == expected, key
    np.testing.assert_array_equal(state_dict[key], array, err_msg=key)
  jax.tree.map(np.testing.assert_array_equal, convert.from_torchvision_resnet(state_dict),
               convert.from_torchvision_resnet(arrays))


def test_load_torch_state_dict_errors_name_the_file(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)
  with pytest.raises(FileNotFoundError, match=r'weights file not found: .*missing\.pth'):
    convert.load_torch_state_dict(str(tmp_path / 'missing.pth'))
  path = tmp_path / 'random.pth'
  path.write_bytes(np.random.default_rng(1).bytes(1000))
  with pytest.raises(ValueError, match=f'^{path} is not a PyTorch checkpoint'):
    convert.load_torch_state_dict(str(path))
  path = tmp_path / 'lists.pth'
  torch_files.save_zip({'epoch': 3, 'losses': [1.0, 0.5]}, path)
  with pytest.raises(ValueError, match=r"lists\.pth holds no state dict .*'epoch', 'losses'"):
    convert.load_torch_state_dict(str(path))


def _recorded_maskrcnn_body(recorded):
  """The recorded backbone's state dict with a few head keys: a Mask R-CNN's prefixes."""
  _, state_dict = recorded
  return {**state_dict, 'rpn.head.conv.0.0.weight': np.zeros((2, 2, 3, 3), np.float32)}


def _run_convert_weights(monkeypatch, capsys, *args):
  """scripts/convert_weights.py *args in this process: (exit status, stdout, stderr)."""
  monkeypatch.delenv(cli.VERBOSE_ENV, raising=False)
  monkeypatch.setattr(sys, 'argv', ['convert_weights.py', *map(str, args)])
  status = 0
  try:
    runpy.run_path(str(REPO_ROOT / 'scripts' / 'convert_weights.py'), run_name='__main__')
  except SystemExit as e:
    status = e.code
  captured = capsys.readouterr()
  return status, captured.out, captured.err


def test_convert_weights_errors_are_one_line_with_the_kind_to_use(recorded, tmp_path,
                                                                  monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, 'torch', None)
  resnet_file, maskrcnn_file = tmp_path / 'resnet50.pth', tmp_path / 'maskrcnn.pth'
  torch_files.save_zip(torch_files.state_dict_of(_small_resnet18()), resnet_file)
  torch_files.save_legacy(torch_files.state_dict_of(_recorded_maskrcnn_body(recorded)),
                          maskrcnn_file)
  random_file = tmp_path / 'random.pth'
  random_file.write_bytes(np.random.default_rng(2).bytes(500))
  cases = [
      ('maskrcnn', tmp_path / 'missing.pth', f'weights file not found: {tmp_path}/missing.pth'),
      ('maskrcnn', random_file, f'{random_file} is not a PyTorch checkpoint'),
      ('maskrcnn', resnet_file, f"{resnet_file} has no 'backbone.body.' keys: it looks like "
                                'an ImageNet ResNet; use --kind resnet'),
      ('resnet', maskrcnn_file, f"{maskrcnn_file} has no 'layer1.' keys: it looks like a "
                                'torchvision Mask R-CNN; use --kind maskrcnn'),
      ('maskrcnn', FIXTURES / 'detectron2_r50_fpn.pkl', 'use --kind detectron2'),
      ('resnet', FIXTURES / 'detectron2_x101_fpn.pth', 'use --kind detectron2'),
      ('detectron2', maskrcnn_file, f"{maskrcnn_file} has no 'backbone.bottom_up.' keys: it "
                                    'looks like a torchvision Mask R-CNN; use --kind maskrcnn'),
  ]
  for kind, source, message in cases:
    status, out, err = _run_convert_weights(monkeypatch, capsys, '--kind', kind, source,
                                            tmp_path / 'out')
    lines = err.splitlines()
    assert status == 1 and not out, (kind, source, err)
    assert len(lines) == 2 and lines[1].startswith('(--verbose'), err
    assert lines[0].startswith('convert_weights.py: error: ') and message in lines[0], err
    assert len(lines[0]) < 250, lines[0]
  assert not os.path.exists(tmp_path / 'out')


def test_convert_weights_reads_a_legacy_pth_without_torch(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, 'torch', None)
  arrays = _small_resnet18()
  source = tmp_path / 'resnet18-5c106cde.pth'
  torch_files.save_legacy(torch_files.state_dict_of(arrays), source)
  status, out, err = _run_convert_weights(monkeypatch, capsys, '--kind', 'resnet', source,
                                          tmp_path / 'out')
  assert status == 0 and out.strip() == f'wrote {tmp_path / "out"}', err
  restored = checkpoint.restore_variables(str(tmp_path / 'out'))
  expected = {collection: {'backbone': tree}
              for collection, tree in convert.from_torchvision_resnet(arrays).items()}
  jax.tree.map(np.testing.assert_array_equal, restored, expected)


def test_key_messages_list_a_few_keys_and_their_count(recorded):
  _, state_dict = recorded
  without_fpn = {k: v for k, v in state_dict.items() if not k.startswith('backbone.fpn.')}
  with pytest.raises(KeyError) as error:
    torchvision_weights.convert_fpn(without_fpn, 'backbone.fpn.')
  message = str(error.value)
  assert "missing keys ['backbone.fpn.inner_blocks.0.0.bias', " in message
  assert ', ...] (16 in all)' in message and 'unexpected' not in message
  assert len(message) < 250, message
  renamed = {f'module.{k}': v for k, v in _small_resnet18().items()}  # a DataParallel save
  with pytest.raises(ValueError) as error:
    convert.from_torchvision_resnet(renamed)
  message = str(error.value)
  assert message.startswith("the state dict has no 'layer1.' keys, so it is not an ImageNet "
                            "ResNet; its keys are ['module.bn1.bias', "), message
  assert message.endswith(f', ...] ({len(renamed)} in all)') and len(message) < 250, message
