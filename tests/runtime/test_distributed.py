"""Mesh and shardings on 8 simulated CPU devices, and the cluster detection."""

import textwrap

import pytest

from maskrcnn_jax.runtime import distributed
from tests.conftest import run_on_eight_cpu_devices

# Runs in a fresh process: the device count is fixed when jax first initialises.
_EIGHT_DEVICES = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from maskrcnn_jax.runtime import distributed
    assert jax.device_count() == 8, jax.devices()
    mesh = distributed.data_mesh()
    rng = np.random.default_rng(0)
    batch = {'x': rng.normal(size=(16, 5)).astype(np.float32),
             'y': rng.normal(size=(16,)).astype(np.float32)}
    arrays = distributed.host_batch_to_global(batch, mesh)
    # Each device holds 2 consecutive examples.
    for shard in arrays['x'].addressable_shards:
      np.testing.assert_array_equal(np.asarray(shard.data), batch['x'][shard.index])
      assert shard.data.shape == (2, 5)
    weights = distributed.replicate(np.arange(5, dtype=np.float32) / 5, mesh)
    assert weights.sharding.is_fully_replicated

    def loss(w, b):
      return jnp.mean((b['x'] @ w - b['y']) ** 2)

    step = jax.jit(jax.value_and_grad(loss),
                   in_shardings=(distributed.replicated(mesh), distributed.batch_sharding(mesh)),
                   out_shardings=distributed.replicated(mesh))
    value, grad = step(weights, arrays)
    # The same global batch on one device, in float64 NumPy.
    w = np.arange(5) / 5
    residual = batch['x'].astype(np.float64) @ w - batch['y']
    np.testing.assert_allclose(value, np.mean(residual ** 2), rtol=1e-5)
    np.testing.assert_allclose(grad, 2 * batch['x'].T @ residual / 16, rtol=1e-4, atol=1e-6)
    try:
      distributed.host_batch_to_global({'images': np.zeros((12, 2), np.float32)}, mesh)
      raise AssertionError('12 examples on 8 devices must be refused')
    except ValueError as error:
      assert "batch['images'] has 12 examples" in str(error), error
    print('ok')
''')


def test_sharded_step_matches_the_single_device_computation():
  run_on_eight_cpu_devices(_EIGHT_DEVICES, timeout=300)


@pytest.mark.parametrize('environ, expected', [
    ({}, 1),
    ({'SLURM_NTASKS': '4'}, 4),
    ({'OMPI_COMM_WORLD_SIZE': '2'}, 2),
    ({'TPU_WORKER_HOSTNAMES': 'host-0,host-1,host-2,host-3'}, 4),
    ({'TPU_WORKER_HOSTNAMES': 'localhost'}, 1),
    ({'SLURM_NTASKS': 'lots'}, 1),
])
def test_cluster_process_count(environ, expected):
  assert distributed.cluster_process_count(environ) == expected


def test_single_process_does_not_start_distributed(monkeypatch):
  for variable in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'PMI_SIZE', 'TPU_WORKER_HOSTNAMES'):
    monkeypatch.delenv(variable, raising=False)
  monkeypatch.setattr(distributed.jax.distributed, 'initialize',
                      lambda *a, **k: pytest.fail('must not initialise a single process'))
  assert distributed.initialize_distributed() == 1


def test_coordinator_needs_process_count_and_id():
  with pytest.raises(ValueError, match='num_processes >= 1 and process_id >= 0'):
    distributed.initialize_distributed('localhost:1234')
