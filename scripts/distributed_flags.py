"""Command-line flags for multi-host runs, shared by train.py and evaluate.py.

One process per host. SLURM, Open MPI and GKE TPU launches are detected from the
environment; on a Cloud TPU VM pod slice pass --distributed; anywhere else pass
--coordinator_address, --num_processes and --process_id.
"""

from absl import flags

from maskrcnn_jax.runtime import distributed

_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, "start jax.distributed with JAX's cluster detection (TPU pods)")
_COORDINATOR = flags.DEFINE_string('coordinator_address', '',
                                   'host:port of process 0 (explicit multi-host launch)')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 0, 'processes of an explicit launch')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, 'this process, 0..num_processes-1')


def initialize() -> int:
  """distributed.initialize_distributed from the flags; returns the process count."""
  return distributed.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                            _PROCESS_ID.value, auto=_DISTRIBUTED.value)
