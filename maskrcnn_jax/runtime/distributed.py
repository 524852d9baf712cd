"""Device mesh and shardings: the batch split over a 'data' axis, parameters replicated.

One process per host. Each host builds its part of the global batch and
`host_batch_to_global` assembles the global arrays without moving data between hosts;
multi-host runs start with `initialize_distributed`.
"""

import os
from typing import Any, Mapping

import jax
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np

DATA_AXIS = 'data'

# Environment variables that give the number of processes of a cluster launch.
_PROCESS_COUNT_VARIABLES = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'PMI_SIZE')


def cluster_process_count(environ: Mapping[str, str] = os.environ) -> int:
  """Processes a SLURM, Open MPI or multi-host TPU launch asks for (1 outside one)."""
  counts = [int(environ[v]) for v in _PROCESS_COUNT_VARIABLES if environ.get(v, '').isdigit()]
  tpu_hosts = environ.get('TPU_WORKER_HOSTNAMES', '')
  if tpu_hosts:
    counts.append(len(tpu_hosts.split(',')))
  return max(counts, default=1)


def initialize_distributed(coordinator_address: str = '', num_processes: int = 0,
                           process_id: int = -1, auto: bool = False) -> int:
  """Starts jax.distributed when flags or the environment ask for several processes.

  Explicit flags (all three) take precedence; otherwise `auto`, or a SLURM, Open MPI or
  GKE TPU launch seen in the environment, initialises with JAX's own cluster detection
  (`auto` is for Cloud TPU VM pod slices, whose host list JAX reads from the metadata
  server rather than the environment). A single process does nothing. Returns
  jax.process_count().
  """
  if coordinator_address:
    if num_processes < 1 or process_id < 0:
      raise ValueError('a coordinator address needs num_processes >= 1 and process_id >= 0, '
                       f'got {num_processes} and {process_id}')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif auto or cluster_process_count() > 1:
    jax.distributed.initialize()
  return jax.process_count()


def data_mesh() -> Mesh:
  """A 1-D mesh over every device of every process, axis 'data'."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data', other axes whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """The same full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def host_batch_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This host's part of the batch -> global arrays sharded on 'data'.

  Args:
    batch: key -> [local_batch, ...] NumPy array, local_batch a multiple of this host's
      device count; hosts hold consecutive slices of the global batch in process order.

  Returns:
    key -> [local_batch * process_count, ...] jax.Array with `batch_sharding(mesh)`.
  """
  sharding = batch_sharding(mesh)
  local_devices = jax.local_device_count()
  arrays = {}
  for key, value in batch.items():
    if value.shape[0] % local_devices:
      raise ValueError(f'batch[{key!r}] has {value.shape[0]} examples on this host, not a '
                       f'multiple of its {local_devices} devices')
    arrays[key] = jax.make_array_from_process_local_data(sharding, value)
  return arrays


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Puts a pytree (parameters, optimizer state) on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))
