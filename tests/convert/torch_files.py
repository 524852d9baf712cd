"""torch.save files written without torch, for the readers' tests: both of its formats.

`save_zip` writes what torch >= 1.6 writes (an archive of data.pkl and one file per
storage) and `save_legacy` the stream of torch < 1.6 (pickles of the magic number, the
format version and the system info, the object's pickle, the storage keys, then each
storage's element count and bytes), as torch/serialization.py `_save` and
`_legacy_save` do: protocol 2, each tensor a `torch._utils._rebuild_tensor_v2` call on a
storage given by persistent id ('storage', torch.<Type>Storage, key, 'cpu', numel[, view]).
"""

import collections
import io
import pickle
import zipfile

import numpy as np

_STORAGE_TYPES = {np.dtype(np.float32): 'FloatStorage', np.dtype(np.float64): 'DoubleStorage',
                  np.dtype(np.float16): 'HalfStorage', np.dtype(np.int64): 'LongStorage',
                  np.dtype(np.int32): 'IntStorage', np.dtype(np.uint8): 'ByteStorage',
                  np.dtype(np.bool_): 'BoolStorage'}
LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


class Global:
  """A torch global (module.name), pickled by name without importing torch."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle wants a reduce function to be callable
    raise TypeError(f'{self.module}.{self.name} stands for a torch global')


class Storage:
  """A torch storage: a flat array of elements, saved under its key."""

  def __init__(self, key: str, elements: np.ndarray):
    self.key, self.elements = key, np.array(elements, order='C').reshape(-1)


class Tensor:
  """A tensor as torch pickles it: a strided view (in elements) into a storage."""

  def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  @classmethod
  def of(cls, array: np.ndarray, key: str) -> 'Tensor':
    """A contiguous tensor holding `array`, in a storage of its own."""
    array = np.array(array, order='C')  # keeps 0-d arrays 0-d, unlike ascontiguousarray
    stride = tuple(s // array.itemsize for s in array.strides)
    return cls(Storage(key, array), 0, array.shape, stride)

  def __reduce__(self):
    return (Global('torch._utils', '_rebuild_tensor_v2'),
            (self.storage, self.offset, tuple(self.size), tuple(self.stride), False,
             collections.OrderedDict()))


class Parameter:
  """An nn.Parameter as torch pickles one: `_rebuild_parameter(tensor, ...)`."""

  def __init__(self, tensor: Tensor):
    self.tensor = tensor

  def __reduce__(self):
    return (Global('torch._utils', '_rebuild_parameter'),
            (self.tensor, True, collections.OrderedDict()))


def state_dict_of(arrays: dict[str, np.ndarray]) -> collections.OrderedDict:
  """A state dict as `module.state_dict()` returns it: an OrderedDict of tensors with the
  `_metadata` attribute (pickled as the OrderedDict's state)."""
  state_dict = collections.OrderedDict(
      (name, Tensor.of(array, str(k))) for k, (name, array) in enumerate(arrays.items()))
  metadata = collections.OrderedDict({'': {'version': 1}})
  state_dict._metadata = metadata  # pylint: disable=protected-access
  return state_dict


class _Pickler(pickle._Pickler):  # pylint: disable=protected-access
  """The pure-Python pickler, writing `Global`s by name and storages by persistent id."""

  def __init__(self, file, legacy: bool):
    super().__init__(file, protocol=2)
    self.legacy = legacy
    self.storages = {}

  def persistent_id(self, obj):
    if not isinstance(obj, Storage):
      return None
    self.storages[obj.key] = obj
    storage_type = Global('torch', _STORAGE_TYPES[obj.elements.dtype])
    pid = ('storage', storage_type, obj.key, 'cpu', obj.elements.size)
    return pid + (None,) if self.legacy else pid

  def save(self, obj, save_persistent_id=True):
    if isinstance(obj, Global):
      self.write(pickle.GLOBAL + f'{obj.module}\n{obj.name}\n'.encode('ascii'))
      return
    super().save(obj, save_persistent_id)


def save_zip(obj, path) -> None:
  """torch.save(obj, path) as torch >= 1.6 writes it."""
  data = io.BytesIO()
  pickler = _Pickler(data, legacy=False)
  pickler.dump(obj)
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('archive/data.pkl', data.getvalue())
    archive.writestr('archive/byteorder', 'little')
    for key, storage in pickler.storages.items():
      archive.writestr(f'archive/data/{key}', storage.elements.tobytes())
    archive.writestr('archive/version', '3\n')


def save_legacy(obj, path) -> None:
  """torch.save(obj, path, _use_new_zipfile_serialization=False): torch < 1.6's format."""
  with open(path, 'wb') as f:
    system = {'protocol_version': 1001, 'little_endian': True,
              'type_sizes': {'short': 2, 'int': 4, 'long': 8}}
    for header in (LEGACY_MAGIC, 1001, system):
      pickle.dump(header, f, protocol=2)
    pickler = _Pickler(f, legacy=True)
    pickler.dump(obj)
    keys = sorted(pickler.storages)
    pickle.dump(keys, f, protocol=2)
    for key in keys:
      elements = pickler.storages[key].elements
      f.write(np.int64(elements.size).tobytes() + elements.tobytes())
