"""Reading pickled weights without running code: Detectron2 .pkl and PyTorch .pth files.

A pickle can name any importable callable and call it while loading. These readers
accept only what a weights file needs -- NumPy arrays (no object dtype), dicts (and
OrderedDicts), lists, tuples, strings, bytes, numbers, booleans and None -- and refuse
any other global with a ValueError naming the file and the global, before it is called.
Two more stand in for what training checkpoints hold beside the weights: an
argparse.Namespace (torchvision's reference scripts save their `args`) becomes a dict,
and a collections.Counter (MultiStepLR's milestones) a dict.

`load_pkl` reads Detectron2's model-zoo pickles ({'model': {name: ndarray}, ...}, also
Python 2 pickles). `load_pth` reads both formats of torch.save, so torch is not needed:
the zip archive (a data.pkl and one file per storage, torch >= 1.6) and the legacy
stream (pickles of a magic number, the format version, the system info and the object,
then the storages' raw bytes: torch < 1.6, which wrote torchvision's older weights).
Tensors become NumPy arrays. `load_weights` reads any of these, the kind found by
content, and says in one line when a file is none of them.
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


class _Namespace(dict):
  """Stands for an argparse.Namespace (a checkpoint's `args`): its attributes as a dict."""

  def __setstate__(self, state):
    if not isinstance(state, dict):
      raise pickle.UnpicklingError('an argparse.Namespace whose state is not a dict')
    self.update(state)


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
    ('argparse', 'Namespace'): _Namespace,
    ('collections', 'Counter'): dict,
    **{(module, '_reconstruct'): _reconstruct for module in _MULTIARRAY},
    **{(module, 'scalar'): _scalar for module in _MULTIARRAY},
    **{(module, '_frombuffer'): _frombuffer
       for module in ('numpy.core.numeric', 'numpy._core.numeric')},
}


class _Refused(pickle.UnpicklingError):
  """A global or value a weights file may not hold (the file is a pickle, but not ours)."""


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the globals in `_ALLOWED` (plus `extra`); refuses everything else."""

  def __init__(self, file, extra: dict | None = None, **kwargs):
    super().__init__(file, **kwargs)
    self._allowed = {**_ALLOWED, **(extra or {})}

  def find_class(self, module: str, name: str):
    try:
      return self._allowed[(module, name)]
    except KeyError:
      raise _Refused(
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


def _existing_file(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'weights file not found: {path}')
  return path


def load_pkl(path: str | os.PathLike):
  """The object pickled in `path` (a Detectron2 model-zoo .pkl), without running code."""
  path = _existing_file(path)
  with open(path, 'rb') as f:
    return loads(f.read(), path)


# torch.save's storage classes -> element dtype (bfloat16 is widened to float32 below).
_TORCH_STORAGES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': 'bfloat16', 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}
# The legacy format's first two pickles (torch/serialization.py MAGIC_NUMBER and
# PROTOCOL_VERSION).
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_VERSION = 1001
_NOT_TORCH = 'is not a PyTorch checkpoint (a torch.save zip archive or legacy file)'
_NOT_WEIGHTS = f'{_NOT_TORCH} nor a pickle of arrays'


class _StorageType:
  """Stands for a torch.*Storage class inside a .pth pickle: only its element dtype."""

  def __init__(self, name: str):
    self.name = name

  @property
  def itemsize(self) -> int:
    dtype = _TORCH_STORAGES[self.name]
    return 2 if dtype == 'bfloat16' else np.dtype(dtype).itemsize


def _storage_array(raw: bytes, storage_type: _StorageType) -> np.ndarray:
  """A storage's raw little-endian bytes -> its elements (bfloat16 widened to float32)."""
  dtype = _TORCH_STORAGES[storage_type.name]
  if dtype == 'bfloat16':  # the high 16 bits of a float32
    return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
  return np.frombuffer(raw, dtype)


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


def _rebuild_parameter(data, requires_grad, backward_hooks, *state):
  """torch._utils._rebuild_parameter(_with_state): an nn.Parameter is its tensor."""
  del requires_grad, backward_hooks, state
  return data


def _torch_globals(rebuild_tensor: Callable[..., Any]) -> dict:
  """The torch globals a .pth pickle may name: storage classes and tensor rebuilders."""
  extra = {(module, name): _StorageType(name)
           for module in ('torch', 'torch.cuda') for name in _TORCH_STORAGES}
  extra[('torch._utils', '_rebuild_tensor_v2')] = rebuild_tensor
  extra[('torch._utils', '_rebuild_parameter')] = _rebuild_parameter
  extra[('torch._utils', '_rebuild_parameter_with_state')] = _rebuild_parameter
  return extra


def _storage_id(pid, length: int) -> tuple:
  """A persistent id ('storage', storage type, key, location, numel[, view]), checked."""
  if not (isinstance(pid, tuple) and len(pid) == length
          and pid[0] in ('storage', b'storage') and isinstance(pid[1], _StorageType)
          and isinstance(pid[2], str) and isinstance(pid[4], int)):
    raise pickle.UnpicklingError(f'unexpected persistent id {pid!r:.200}')
  return pid


def _load_zip(path: str):
  """torch.save's zip archive: data.pkl, and each storage's bytes in data/<key>."""
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
    if len(pickles) != 1:
      raise ValueError(f'{path} {_NOT_TORCH}: a zip archive with {len(pickles)} data.pkl')
    root = pickles[0][:-len('data.pkl')]
    if f'{root}byteorder' in names and archive.read(f'{root}byteorder') != b'little':
      raise ValueError(f'{path}: big-endian checkpoints are not supported')
    storages = {}

    def persistent_load(pid):
      _, storage_type, key, _, numel = _storage_id(pid, 5)
      if key not in storages:
        storages[key] = _storage_array(archive.read(f'{root}data/{key}'), storage_type)[:numel]
      return storages[key]

    unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])),
                                     extra=_torch_globals(_rebuild_tensor))
    unpickler.persistent_load = persistent_load
    try:
      return unpickler.load()
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, KeyError) as e:
      raise ValueError(f'{path}: cannot read it as a weights checkpoint: {e}') from None


def _is_legacy(data: bytes) -> bool:
  """Whether `data` starts as torch.save's legacy format does: the pickled magic number."""
  return any(data.startswith(pickle.dumps(_LEGACY_MAGIC, protocol))
             for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1))


def _load_legacy(data: bytes, path: str):
  """torch.save's legacy stream (see the module docstring), tensors as NumPy arrays.

  The storages' bytes follow the object's pickle, so it is read twice: once for the
  storages' types (which size their bytes), once to build the tensors.
  """
  stream = io.BytesIO(data)

  def next_pickle(extra=None, persistent_load=None):
    unpickler = _RestrictedUnpickler(stream, extra=extra, encoding='latin1')
    if persistent_load is not None:
      unpickler.persistent_load = persistent_load
    return unpickler.load()

  try:
    next_pickle()  # the magic number, checked by _is_legacy
    version = next_pickle()
    if version != _LEGACY_VERSION:
      raise pickle.UnpicklingError(f'unknown legacy torch.save version {version!r}')
    system = next_pickle()
    if isinstance(system, dict) and not system.get('little_endian', True):
      raise ValueError('big-endian checkpoints are not supported')
    start = stream.tell()
    storage_types = {}

    def note_type(pid):
      _, storage_type, key, *_ = _storage_id(pid, 6)
      storage_types[key] = storage_type

    next_pickle(_torch_globals(lambda *args: None), note_type)
    keys = next_pickle()
    offset = stream.tell()
    storages = {}
    for key in keys:
      # Each storage: its element count (int64, little-endian), then its bytes.
      numel = int.from_bytes(data[offset:offset + 8], 'little', signed=True)
      nbytes = numel * storage_types[key].itemsize
      raw = data[offset + 8:offset + 8 + nbytes]
      if numel < 0 or len(raw) != nbytes:
        raise EOFError(f'the file ends inside storage {key}')
      storages[key] = _storage_array(raw, storage_types[key])
      offset += 8 + nbytes

    def storage(pid):
      _, _, key, _, _, view = _storage_id(pid, 6)
      if view is None:
        return storages[key]
      _, view_offset, view_numel = view  # a storage that is a slice of another
      return storages[key][view_offset:view_offset + view_numel]

    stream.seek(start)
    return next_pickle(_torch_globals(_rebuild_tensor), storage)
  except (pickle.UnpicklingError, EOFError, TypeError, ValueError, KeyError) as e:
    raise ValueError(f'{path}: cannot read it as a weights checkpoint: {e}') from None


def load_pth(path: str | os.PathLike):
  """The object torch.save wrote to `path` (zip or legacy format), tensors as NumPy arrays.

  Float16/bfloat16 tensors become float32. Only tensors, dicts, lists, strings and
  numbers are accepted: a file that asks for anything else is refused (ValueError), and
  so is a file that is not a torch.save file.
  """
  path = _existing_file(path)
  if zipfile.is_zipfile(path):
    value = _load_zip(path)
  else:
    with open(path, 'rb') as f:
      data = f.read()
    if not _is_legacy(data):
      raise ValueError(f'{path} {_NOT_TORCH}')
    value = _load_legacy(data, path)
  value = _widen_halves(value)
  _check_result(value, path)
  return value


def load_weights(path: str | os.PathLike):
  """The object in `path`, a torch.save file (`load_pth`) or a plain weights pickle
  (`load_pkl`, e.g. a Detectron2 .pkl), told apart by content, not by name.

  A file that is none of these (random bytes, text) is one ValueError naming it.
  """
  path = _existing_file(path)
  if zipfile.is_zipfile(path):
    return load_pth(path)
  with open(path, 'rb') as f:
    data = f.read()
  if _is_legacy(data):
    return load_pth(path)
  try:
    value = _RestrictedUnpickler(io.BytesIO(data), encoding='latin1').load()
  except _Refused as e:
    raise ValueError(f'{path}: cannot read it as a weights pickle: {e}') from None
  except Exception:  # pylint: disable=broad-except
    # Bytes that are no pickle make the unpickler raise nearly any exception type.
    raise ValueError(f'{path} {_NOT_WEIGHTS}') from None
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
