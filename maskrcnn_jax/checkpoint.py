"""Orbax checkpoints of model variables ({'params': ..., 'batch_stats': ...})."""

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def save_variables(path: str, variables: Any) -> None:
  """Writes `variables` to the directory `path` (must not exist yet).

  Orbax writes into a temporary directory and renames it when complete, so an
  interrupted save never leaves a directory that looks like a finished checkpoint.
  """
  path = os.path.abspath(path)
  if os.path.exists(path):
    raise FileExistsError(f'checkpoint directory {path} already exists; choose a new path')
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, jax.tree.map(np.asarray, variables))
  checkpointer.wait_until_finished()


def restore_variables(path: str) -> Any:
  """Reads variables written by `save_variables` as a tree of NumPy arrays."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no checkpoint directory at {path}')
  restored = ocp.StandardCheckpointer().restore(path)
  return jax.tree.map(np.asarray, restored)


def _step_manager(directory: str, keep: int = 0) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep or None, create=True)
  # The handler named: without it, reading a step's metadata warns about its item.
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_handlers=ocp.StandardCheckpointHandler())


def save_train_state(directory: str, step: int, state: Any, keep: int,
                     metadata: dict[str, Any] | None = None) -> None:
  """Writes `state` (a pytree of arrays) as `directory/<step>`, keeping the newest `keep`.

  `metadata` (JSON-serializable) is stored beside it, read back by `train_metadata`.
  A save interrupted by a killed process leaves only an orbax temporary directory,
  which `latest_train_step` and `restore_train_state` never see.
  """
  with _step_manager(directory, keep) as manager:
    manager.save(step, args=ocp.args.StandardSave(state), force=True,
                 custom_metadata=metadata or {})
    manager.wait_until_finished()


def train_steps(directory: str) -> list[int]:
  """The complete training checkpoints' steps, oldest first ([] if there is none)."""
  if not os.path.isdir(directory):
    return []
  with _step_manager(directory) as manager:
    return sorted(manager.all_steps())


def train_metadata(directory: str, step: int) -> dict[str, Any]:
  """The `metadata` saved with `directory/<step>` ({} if none was)."""
  with _step_manager(directory) as manager:
    return dict(manager.metadata(step).custom_metadata or {})


def latest_train_step(directory: str) -> int | None:
  """The newest complete training checkpoint's step, or None if there is none."""
  if not os.path.isdir(directory):
    return None
  with _step_manager(directory) as manager:
    return manager.latest_step()


def restore_train_state(directory: str, step: int, like: Any) -> Any:
  """Reads `directory/<step>` into the structure, dtypes and shardings of `like`."""
  with _step_manager(directory) as manager:
    if step not in manager.all_steps():
      raise FileNotFoundError(f'no training checkpoint for step {step} in {directory} '
                              f'(it has steps {list(manager.all_steps())})')
    return manager.restore(step, args=ocp.args.StandardRestore(like))


def variables_item(path: str) -> tuple[str, int | None]:
  """(the orbax item directory `load_variables(path)` reads, its training step or None).

  `path` is a `save_variables` directory (step None), a training checkpoint directory
  (its newest step), one step directory of it or that step's item, or a training
  workdir (its `checkpoints` folder's newest step).

  Raises:
    FileNotFoundError: `path` is no directory, or a workdir or checkpoints folder with no
      complete step.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'no checkpoint directory at {path}')
  item = os.path.join(path, 'default')  # CheckpointManager's item inside a step directory
  if os.path.isdir(item):
    name = os.path.basename(path)
    return item, int(name) if name.isdigit() else None
  if os.path.basename(path) == 'default' and os.path.basename(os.path.dirname(path)).isdigit():
    return path, int(os.path.basename(os.path.dirname(path)))
  folder = os.path.join(path, 'checkpoints')  # a training workdir
  if os.path.isdir(folder):
    step = latest_train_step(folder)
    if step is None:
      raise FileNotFoundError(f'{folder} holds no complete training checkpoint yet')
    return os.path.join(folder, str(step), 'default'), step
  step = latest_train_step(path)
  return (path, None) if step is None else (os.path.join(path, str(step), 'default'), step)


def load_variables(path: str) -> dict[str, Any]:
  """{'params', 'batch_stats'} as NumPy arrays from any checkpoint this package writes.

  `path` is what `variables_item` takes: a `save_variables` directory, a training
  checkpoint directory (its newest step is read), one step directory of it, or a
  training workdir. Only the variables are read, never the optimizer state, and every
  array comes back on the host whatever mesh saved it.
  """
  item, _ = variables_item(path)
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(item).item_metadata
  if metadata is None:
    raise FileNotFoundError(f'{os.path.abspath(path)} holds no variables or training '
                            'checkpoint')
  tree = metadata.tree
  if not isinstance(tree, dict) or 'params' not in tree:
    raise ValueError(f'checkpoint {item} has no params (top-level keys: '
                     f'{sorted(tree) if isinstance(tree, dict) else type(tree).__name__})')
  wanted = {key: tree[key] for key in ('params', 'batch_stats') if key in tree}
  restored = checkpointer.restore(item, args=ocp.args.PyTreeRestore(
      item=wanted, partial_restore=True,
      restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)))
  return {'params': restored['params'], 'batch_stats': restored.get('batch_stats', {})}
