"""The restricted unpickler: weights load, code never runs, anything else is refused."""

import collections
import os
import pickle
import zipfile

import numpy as np
import pytest

from maskrcnn_jax.convert import safe_pickle
from tests.conftest import FIXTURES


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


def test_missing_and_legacy_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='nothing.pkl'):
    safe_pickle.load_pkl(tmp_path / 'nothing.pkl')
  path = tmp_path / 'legacy.pth'
  path.write_bytes(pickle.dumps({'a': 1}))
  with pytest.raises(ValueError, match='not a PyTorch zip checkpoint'):
    safe_pickle.load_pth(path)
  path = tmp_path / 'truncated.pkl'
  path.write_bytes(pickle.dumps({'a': np.ones(3)})[:-5])
  with pytest.raises(ValueError, match='truncated.pkl'):
    safe_pickle.load_pkl(path)
