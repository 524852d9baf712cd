"""Reading pickled weights without running code: Detectron2 .pkl and PyTorch .pth files.

A pickle can name any importable callable and call it while loading. These readers
accept only what a weights file needs -- NumPy arrays (no object dtype), dicts (and
OrderedDicts), lists, tuples, strings, bytes, numbers, booleans and None -- and refuse
any other global with a ValueError naming the file and the global, before it is called.

`load_pkl` reads Detectron2's model-zoo pickles ({'model': {name: ndarray}, ...}, also
Python 2 pickles). `load_pth` reads PyTorch's zip format (torch.save since 1.6): the
tensors become NumPy arrays read straight from the archive, so torch is not needed.
"""

import collections
import io
import os
import pickle
from typing import Any, Callable
import zipfile

import numpy as np

_MULTIARRAY = ('numpy.core.multiarray', 'numpy._core.multiarray')


def _checked_dtype(spec, align=False, copy=False) -> np.dtype:
  dtype = np.dtype(spec, align, copy)
  if dtype.hasobject:
    raise pickle.UnpicklingError(f'object arrays are refused (dtype {dtype})')
  return dtype


def _reconstruct(cls, shape, dtype_code) -> np.ndarray:
  """NumPy's array pickle creates an empty ndarray, then fills it by __setstate__."""
  if cls is not np.ndarray:
    raise pickle.UnpicklingError(f'only plain ndarrays are accepted, not {cls!r}')
  return np.ndarray.__new__(np.ndarray, shape, 'b')


def _scalar(dtype: np.dtype, data: bytes) -> np.generic:
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    raise pickle.UnpicklingError(f'only numeric NumPy scalars are accepted, not {dtype!r}')
  return np.frombuffer(data, dtype, count=1)[0]


def _latin1_encode(text: str, encoding: str = 'latin1') -> bytes:
  """Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1')."""
  if encoding not in ('latin1', 'latin-1'):
    raise pickle.UnpicklingError(f'only latin1 byte strings are accepted, not {encoding!r}')
  return text.encode('latin1')


def _frombuffer(buffer, dtype: np.dtype, shape, order: str) -> np.ndarray:
  """Protocol-5 pickles of arrays: the raw buffer, dtype, shape and memory order."""
  if not isinstance(dtype, np.dtype) or dtype.hasobject or order not in ('C', 'F'):
    raise pickle.UnpicklingError(f'only numeric arrays are accepted, not {dtype!r}')
  return np.frombuffer(buffer, dtype).reshape(shape, order=order).copy(order=order)


def _empty_bytes(*args) -> bytes:
  """Protocol-2 pickles written by Python 3 store b'' as a call of bytes()."""
  if args:
    raise pickle.UnpicklingError('bytes() is accepted only without arguments')
  return b''


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): _checked_dtype,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('_codecs', 'encode'): _latin1_encode,
    ('__builtin__', 'bytes'): _empty_bytes,
    ('builtins', 'bytes'): _empty_bytes,
    **{(module, '_reconstruct'): _reconstruct for module in _MULTIARRAY},
    **{(module, 'scalar'): _scalar for module in _MULTIARRAY},
    **{(module, '_frombuffer'): _frombuffer
       for module in ('numpy.core.numeric', 'numpy._core.numeric')},
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the globals in `_ALLOWED` (plus `extra`); refuses everything else."""

  def __init__(self, file, extra: dict | None = None, **kwargs):
    super().__init__(file, **kwargs)
    self._allowed = {**_ALLOWED, **(extra or {})}

  def find_class(self, module: str, name: str):
    try:
      return self._allowed[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f'refused to load the global {module}.{name}: a weights file may hold only '
          'arrays, dicts, lists, strings and numbers') from None


def _check_result(value, path: str, where: str = 'the file'):
  """Walks the loaded tree: only the accepted types (an ndarray subclass or object would be)."""
  if isinstance(value, dict):
    for key, item in value.items():
      _check_result(key, path, where)
      _check_result(item, path, f'{where}[{key!r}]')
  elif isinstance(value, (list, tuple)):
    for item in value:
      _check_result(item, path, where)
  elif isinstance(value, np.ndarray):
    if type(value) is not np.ndarray or value.dtype.hasobject:
      raise ValueError(f'{path}: {where} is not a numeric array')
  elif not (value is None or isinstance(value, (str, bytes, bool, int, float, complex,
                                                np.generic))):
    raise ValueError(f'{path}: {where} holds a {type(value).__name__}')


def loads(data: bytes, path: str = '<bytes>'):
  """Unpickles `data` with the restricted unpickler (see the module docstring)."""
  try:
    value = _RestrictedUnpickler(io.BytesIO(data), encoding='latin1').load()
  except (pickle.UnpicklingError, EOFError, TypeError, ValueError) as e:
    raise ValueError(f'{path}: cannot read it as a weights pickle: {e}') from None
  _check_result(value, path)
  return value


def load_pkl(path: str | os.PathLike):
  """The object pickled in `path` (a Detectron2 model-zoo .pkl), without running code."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'weights file not found: {path}')
  with open(path, 'rb') as f:
    return loads(f.read(), path)


# torch.save's storage classes -> element dtype (bfloat16 is widened to float32 below).
_TORCH_STORAGES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': 'bfloat16', 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}


class _StorageType:
  """Stands for a torch.*Storage class inside a .pth pickle: only its element dtype."""

  def __init__(self, name: str):
    self.name = name


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *unused) -> np.ndarray:
  """torch._utils._rebuild_tensor_v2 as a copy of a strided view into the storage."""
  itemsize = storage.itemsize
  if all(size):
    last = offset + sum((s - 1) * st for s, st in zip(size, stride))
    if offset < 0 or min(stride, default=0) < 0 or last >= len(storage):
      raise pickle.UnpicklingError('a tensor reaches outside its storage')
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], shape=tuple(size), strides=tuple(st * itemsize for st in stride))
  return np.array(view)


def load_pth(path: str | os.PathLike):
  """The object torch.save wrote to `path` (zip format), tensors as NumPy arrays.

  Float16/bfloat16 tensors become float32. Only tensors, dicts, lists, strings and
  numbers are accepted: a file that asks for anything else is refused (ValueError).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'weights file not found: {path}')
  if not zipfile.is_zipfile(path):
    raise ValueError(f'{path}: not a PyTorch zip checkpoint (torch.save since 1.6); '
                     'save it again with a recent torch')
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
    if len(pickles) != 1:
      raise ValueError(f'{path}: expected one data.pkl in the archive, found {len(pickles)}')
    root = pickles[0][:-len('data.pkl')]
    if f'{root}byteorder' in names and archive.read(f'{root}byteorder') != b'little':
      raise ValueError(f'{path}: big-endian checkpoints are not supported')
    storages = {}

    def persistent_load(pid):
      if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'
              and isinstance(pid[1], _StorageType)):
        raise pickle.UnpicklingError(f'unexpected persistent id {pid!r}')
      _, storage_type, key, _, numel = pid
      if key not in storages:
        raw = archive.read(f'{root}data/{key}')
        dtype = _TORCH_STORAGES[storage_type.name]
        if dtype == 'bfloat16':  # the high 16 bits of a float32
          array = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
          array = np.frombuffer(raw, dtype)
        storages[key] = array[:numel]
      return storages[key]

    extra = {('torch', name): _StorageType(name) for name in _TORCH_STORAGES}
    extra[('torch._utils', '_rebuild_tensor_v2')] = _rebuild_tensor
    unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), extra=extra)
    unpickler.persistent_load = persistent_load
    try:
      value = unpickler.load()
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, KeyError) as e:
      raise ValueError(f'{path}: cannot read it as a weights checkpoint: {e}') from None
  value = _widen_halves(value)
  _check_result(value, path)
  return value


def _widen_halves(value):
  """float16 arrays -> float32 (bfloat16 ones already are), through dicts and lists."""
  if isinstance(value, dict):
    return type(value)((k, _widen_halves(v)) for k, v in value.items())
  if isinstance(value, list):
    return [_widen_halves(v) for v in value]
  if isinstance(value, np.ndarray) and value.dtype == np.float16:
    return value.astype(np.float32)
  return value
