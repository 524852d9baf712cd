"""Conversion tables: rows that move a foreign state dict's arrays into our variables.

Each part of the model has a table of rows (foreign key suffix, collection, our
'/'-separated path, transform), applied under a state dict prefix by `convert_table`,
which names the missing and unexpected keys (a few of each, and their count). PyTorch
conv weights [out, in, kh, kw] become Flax kernels [kh, kw, in, out] (`conv_kernel`);
Linear weights [out, in] become [in, out] (`dense_kernel`).
"""

from typing import Callable, Iterable, Mapping

import numpy as np

Table = Iterable[tuple[str, str, str, Callable[[np.ndarray], np.ndarray]]]


def conv_kernel(weight: np.ndarray) -> np.ndarray:
  """PyTorch Conv2d weight [out, in, kh, kw] -> Flax kernel [kh, kw, in, out]."""
  return np.transpose(weight, (2, 3, 1, 0))


def dense_kernel(weight: np.ndarray) -> np.ndarray:
  """PyTorch Linear weight [out, in] -> Flax kernel [in, out]."""
  return np.transpose(weight)


def identity(value: np.ndarray) -> np.ndarray:
  """Biases and batch norm vectors convert unchanged."""
  return value


def convert_table(state_dict: Mapping[str, np.ndarray], prefix: str, table: Table,
                  ignore: tuple[str, ...] = ()) -> dict[str, dict]:
  """Applies a conversion table to the keys under `prefix`.

  Args:
    state_dict: torch key -> array.
    prefix: prepended to every key suffix in `table` (e.g. 'backbone.body.').
    table: (key suffix, collection, our path 'a/b/kernel', transform) rows.
    ignore: key suffixes (prefixes of them) under `prefix` that are dropped silently;
      `num_batches_tracked` counters always are.

  Returns:
    {collection: nested dict of float32 NumPy arrays}.

  Raises:
    KeyError: naming the table's keys absent from `state_dict` and the keys under
      `prefix` that no row converts (`key_list`: a few of each and their count).
  """
  table = list(table)
  wanted = {prefix + suffix for suffix, *_ in table}
  missing = sorted(wanted - set(state_dict))
  unexpected = sorted(
      key for key in state_dict
      if key.startswith(prefix) and key not in wanted
      and not key.endswith('num_batches_tracked')
      and not key[len(prefix):].startswith(ignore))
  if missing or unexpected:
    problems = [f'{name} keys {key_list(keys)}' for name, keys in
                (('missing', missing), ('unexpected', unexpected)) if keys]
    raise KeyError(f"cannot convert the state dict under {prefix!r}: {'; '.join(problems)}")
  variables = {}
  for suffix, collection, path, transform in table:
    *parents, leaf = path.split('/')
    node = variables.setdefault(collection, {})
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = transform(np.asarray(state_dict[prefix + suffix], np.float32))
  return variables


def key_list(keys: Iterable[str], shown: int = 3) -> str:
  """The first `shown` of the sorted keys and their count: ['a', 'b', 'c', ...] (120 in all)."""
  keys = sorted(keys)
  names = ', '.join(repr(key) for key in keys[:shown])
  return f'[{names}]' if len(keys) <= shown else f'[{names}, ...] ({len(keys)} in all)'


def deconv_kernel(weight: np.ndarray) -> np.ndarray:
  """PyTorch ConvTranspose2d weight [in, out, kh, kw] -> Flax ConvTranspose kernel.

  Flax's ConvTranspose (transpose_kernel=False) correlates the dilated input with
  [kh, kw, in, out], so PyTorch's kernel is also flipped in both spatial axes.
  """
  return np.ascontiguousarray(np.transpose(weight, (2, 3, 0, 1))[::-1, ::-1])


def merge_under(trees: Mapping[str, dict]) -> dict[str, dict]:
  """{submodule: {collection: tree}} -> {collection: {submodule: tree}}."""
  merged = {}
  for submodule, variables in trees.items():
    for collection, tree in variables.items():
      merged.setdefault(collection, {})[submodule] = tree
  return merged
