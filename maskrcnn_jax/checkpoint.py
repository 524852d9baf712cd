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
