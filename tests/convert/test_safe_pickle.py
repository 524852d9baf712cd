"""The restricted unpickler: weights load, code never runs, anything else is refused.

torch.save's two formats are checked on files written by hand (tests/convert/
torch_files.py) and on one written by torch (tests/fixtures/detectron2_x101_fpn.pth).
"""

import argparse
import collections
import os
import pickle
import sys
import zipfile

import numpy as np
import pytest

from maskrcnn_jax.convert import safe_pickle
from tests.conftest import FIXTURES
from tests.convert import torch_files


class _RunsCode:
  """Pickles as a call of os.system: loading it with plain pickle would run a command."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


@pytest.mark.parametrize('protocol', range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_arrays_dicts_lists_strings_numbers_load(tmp_path, protocol):
  value = {'model': collections.OrderedDict(
      a=np.arange(12, dtype=np.float32).reshape(3, 4), b=np.asfortranarray(np.eye(3)),
      c=np.array([1, 2], np.int64), d=np.float32(2.5), e=np.zeros((0, 3), np.float16)),
           '__author__': 'someone', 'list': [1, 2.0, None, True, (3, 'x')], 'raw': b'\x00\xff'}
  path = tmp_path / 'weights.pkl'
  path.write_bytes(pickle.dumps(value, protocol=protocol))
  loaded = safe_pickle.load_pkl(path)
  assert loaded.keys() == value.keys() and loaded['list'] == value['list']
  assert loaded['__author__'] == 'someone' and loaded['raw'] == b'\x00\xff'
  for key, array in value['model'].items():
    assert loaded['model'][key].dtype == array.dtype, key
    np.testing.assert_array_equal(loaded['model'][key], array)
  assert loaded['model']['b'].flags.f_contiguous


def test_code_is_refused_before_it_runs(tmp_path):
  marker = tmp_path / 'ran'
  path = tmp_path / 'evil.pkl'
  path.write_bytes(pickle.dumps({'model': _RunsCode(marker)}, protocol=2))
  with pytest.raises(ValueError, match=r'evil\.pkl.*refused to load the global (posix|os|nt)\.system'):
    safe_pickle.load_pkl(path)
  assert not marker.exists()


@pytest.mark.parametrize('value,message', [
    (np.array([1, 'a'], dtype=object), 'object'),
    (np.ma.masked_array([1.0, 2.0]), 'refused to load the global numpy.ma'),
    ({1, 2}, r'refused to load the global (__builtin__|builtins)\.set'),
])
def test_other_objects_are_refused(tmp_path, value, message):
  path = tmp_path / 'other.pkl'
  path.write_bytes(pickle.dumps({'model': {'w': value}}, protocol=2))
  with pytest.raises(ValueError, match=message):
    safe_pickle.load_pkl(path)


def test_detectron2_zoo_layout_fixture():
  data = safe_pickle.load_pkl(FIXTURES / 'detectron2_r50_fpn.pkl')
  assert set(data) == {'model', '__author__'}
  assert all(type(v) is np.ndarray and v.dtype == np.float32 for v in data['model'].values())


def test_pth_written_by_torch_loads_without_torch():
  data = safe_pickle.load_pth(FIXTURES / 'detectron2_x101_fpn.pth')
  assert 'model' in data
  weight = data['model']['roi_heads.box_predictor.cls_score.weight']
  assert weight.shape == (6, 32) and weight.dtype == np.float32


def test_pth_with_code_is_refused(tmp_path):
  marker = tmp_path / 'ran'
  path = tmp_path / 'evil.pth'
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('evil/data.pkl', pickle.dumps({'model': _RunsCode(marker)}, protocol=2))
  with pytest.raises(ValueError, match=r'evil\.pth.*refused to load the global'):
    safe_pickle.load_pth(path)
  assert not marker.exists()


def test_missing_and_truncated_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='nothing.pkl'):
    safe_pickle.load_pkl(tmp_path / 'nothing.pkl')
  path = tmp_path / 'truncated.pkl'
  path.write_bytes(pickle.dumps({'a': np.ones(3)})[:-5])
  with pytest.raises(ValueError, match='truncated.pkl'):
    safe_pickle.load_pkl(path)


def _reference_checkpoint():
  """What torchvision's reference train.py saves: the model's state dict beside the
  optimizer's and scheduler's state, its argparse args and the epoch."""
  shared = torch_files.Storage('shared', np.arange(24, dtype=np.float32))
  model = torch_files.state_dict_of({
      'conv.weight': np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 7,
      'half.weight': np.array([[0.5, -2.0]], np.float16),
      'bn.num_batches_tracked': np.array(7, np.int64),
      'mask': np.array([True, False, True])})
  # Two tensors viewing one storage: from element 2, and that view transposed.
  model['view'] = torch_files.Tensor(shared, 2, (3, 4), (4, 1))
  model['view_t'] = torch_files.Tensor(shared, 2, (4, 3), (1, 4))
  momentum = torch_files.Tensor.of(np.full(3, 0.25, np.float32), 'momentum')
  return {'model': model,
          'optimizer': {'state': {0: {'momentum_buffer': momentum}},
                        'param_groups': [{'lr': 0.02, 'momentum': 0.9, 'nesterov': False,
                                          'foreach': None, 'params': [0]}]},
          'lr_scheduler': {'milestones': collections.Counter({16: 1, 22: 1}),
                           'base_lrs': [0.02], 'last_epoch': 3},
          'args': argparse.Namespace(lr=0.02, data_path='/data/coco', amp=False),
          'epoch': 3,
          'parameter': torch_files.Parameter(torch_files.Tensor.of(np.ones(2), 'param'))}


@pytest.mark.parametrize('save', [torch_files.save_zip, torch_files.save_legacy])
def test_torch_save_formats_load_without_torch(tmp_path, monkeypatch, save):
  monkeypatch.setitem(sys.modules, 'torch', None)  # makes `import torch` fail
  path = tmp_path / 'checkpoint.pth'
  save(_reference_checkpoint(), path)
  for load in (safe_pickle.load_pth, safe_pickle.load_weights):
    data = load(path)
    model = data['model']
    assert list(model) == ['conv.weight', 'half.weight', 'bn.num_batches_tracked', 'mask',
                           'view', 'view_t']
    np.testing.assert_array_equal(
        model['conv.weight'], np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) / 7)
    assert model['half.weight'].dtype == np.float32  # float16 widened
    np.testing.assert_array_equal(model['half.weight'], [[0.5, -2.0]])
    assert model['bn.num_batches_tracked'].shape == () and model['bn.num_batches_tracked'] == 7
    assert model['mask'].dtype == np.bool_ and model['mask'].tolist() == [True, False, True]
    view = np.arange(2, 14, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(model['view'], view)
    np.testing.assert_array_equal(model['view_t'], view.T)
    np.testing.assert_array_equal(data['optimizer']['state'][0]['momentum_buffer'], 0.25)
    assert data['optimizer']['param_groups'][0]['foreach'] is None
    assert data['lr_scheduler']['milestones'] == {16: 1, 22: 1}
    assert data['args'] == {'lr': 0.02, 'data_path': '/data/coco', 'amp': False}
    assert data['epoch'] == 3
    np.testing.assert_array_equal(data['parameter'], [1.0, 1.0])


@pytest.mark.parametrize('save', [torch_files.save_zip, torch_files.save_legacy])
def test_torch_save_formats_with_code_are_refused(tmp_path, save):
  marker = tmp_path / 'ran'
  path = tmp_path / 'evil.pth'
  save({'model': torch_files.state_dict_of({'w': np.ones(2, np.float32)}),
        'args': _RunsCode(marker)}, path)
  for load in (safe_pickle.load_pth, safe_pickle.load_weights):
    with pytest.raises(ValueError, match=r'evil\.pth.*refused to load the global'):
      load(path)
  assert not marker.exists()


def test_files_that_are_not_torch_checkpoints_say_so_in_one_line(tmp_path):
  random_bytes = tmp_path / 'random.pth'
  random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
  text = tmp_path / 'notes.pth'
  text.write_text('error: 101\nthese are not weights\n')
  archive = tmp_path / 'archive.pth'
  with zipfile.ZipFile(archive, 'w') as f:
    f.writestr('readme.txt', 'no data.pkl here')
  plain = tmp_path / 'plain.pth'
  plain.write_bytes(pickle.dumps({'w': np.ones(2, np.float32)}))
  for path in (random_bytes, text, archive, plain):
    with pytest.raises(ValueError) as error:
      safe_pickle.load_pth(path)
    message = str(error.value)
    assert message.startswith(f'{path} is not a PyTorch checkpoint'), message
    assert '\n' not in message and len(message) < 200, message
  for path in (random_bytes, text, archive):
    with pytest.raises(ValueError, match=f'^{path} is not a PyTorch checkpoint'):
      safe_pickle.load_weights(path)
  # A pickle of arrays (a Detectron2 .pkl) is a weights file too.
  np.testing.assert_array_equal(safe_pickle.load_weights(plain)['w'], [1.0, 1.0])
  with pytest.raises(FileNotFoundError, match='weights file not found: .*missing.pth'):
    safe_pickle.load_weights(tmp_path / 'missing.pth')


def test_truncated_legacy_file_is_an_error_naming_it(tmp_path):
  path = tmp_path / 'cut.pth'
  torch_files.save_legacy(torch_files.state_dict_of({'w': np.ones(100, np.float32)}), path)
  path.write_bytes(path.read_bytes()[:-40])  # the storage's last 10 floats
  with pytest.raises(ValueError, match=r'cut\.pth: cannot read it .*ends inside storage'):
    safe_pickle.load_pth(path)
