"""Round trips and error cases of the variables checkpoint wrapper."""

import jax
import numpy as np
import pytest

from maskrcnn_jax import checkpoint


def _variables():
  rng = np.random.default_rng(0)
  return {
      'params': {'conv': {'kernel': rng.normal(size=(3, 3, 2, 4)).astype(np.float32)}},
      'batch_stats': {'bn': {'mean': rng.normal(size=(4,)).astype(np.float32)}},
  }


def test_round_trip_keeps_every_value(tmp_path):
  variables = _variables()
  checkpoint.save_variables(str(tmp_path / 'ckpt'), variables)
  restored = checkpoint.restore_variables(str(tmp_path / 'ckpt'))
  np.testing.assert_array_equal(restored['params']['conv']['kernel'],
                                variables['params']['conv']['kernel'])
  np.testing.assert_array_equal(restored['batch_stats']['bn']['mean'],
                                variables['batch_stats']['bn']['mean'])


def test_missing_checkpoint_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match='nowhere'):
    checkpoint.restore_variables(str(tmp_path / 'nowhere'))


def test_existing_directory_is_never_overwritten(tmp_path):
  checkpoint.save_variables(str(tmp_path / 'ckpt'), _variables())
  with pytest.raises(FileExistsError, match='ckpt'):
    checkpoint.save_variables(str(tmp_path / 'ckpt'), _variables())


def _train_state(step):
  rng = np.random.default_rng(step)
  return {'step': np.asarray(step, np.int64),
          'params': {'w': rng.normal(size=(3, 2)).astype(np.float32)},
          'opt_state': {'momentum': rng.normal(size=(3, 2)).astype(np.float32)},
          'rng': np.asarray(jax.random.key_data(jax.random.key(step)))}


def test_train_checkpoints_keep_the_newest_and_restore_exactly(tmp_path):
  directory = str(tmp_path / 'run')
  assert checkpoint.latest_train_step(directory) is None
  for step in (10, 20, 30):
    checkpoint.save_train_state(directory, step, _train_state(step), keep=2)
  assert sorted(p.name for p in (tmp_path / 'run').iterdir()) == ['20', '30']
  assert checkpoint.latest_train_step(directory) == 30
  restored = checkpoint.restore_train_state(directory, 30, jax.tree.map(np.zeros_like,
                                                                        _train_state(0)))
  jax.tree.map(np.testing.assert_array_equal, restored, _train_state(30))


def test_an_interrupted_save_is_never_taken_for_a_checkpoint(tmp_path):
  directory = tmp_path / 'run'
  checkpoint.save_train_state(str(directory), 10, _train_state(10), keep=3)
  # What a process killed while writing step 20 leaves behind.
  partial = directory / '20.orbax-checkpoint-tmp-1700000000' / 'default'
  partial.mkdir(parents=True)
  (partial / 'manifest.ocdbt').write_bytes(b'\x00partial')
  assert checkpoint.latest_train_step(str(directory)) == 10
  with pytest.raises(FileNotFoundError, match='step 20 .* has steps \\[10\\]'):
    checkpoint.restore_train_state(str(directory), 20, _train_state(0))


def _model_train_state(step):
  """A step_lib.TrainState of tiny arrays with a real optax momentum state."""
  import optax  # pylint: disable=import-outside-toplevel
  from maskrcnn_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  variables = jax.tree.map(lambda x: x + step, _variables())
  return step_lib.TrainState(
      step=jax.numpy.asarray(step, jax.numpy.int32), params=variables['params'],
      batch_stats=variables['batch_stats'],
      opt_state=optax.sgd(0.1, momentum=0.9).init(variables['params']))


def test_load_variables_reads_every_kind_of_checkpoint(tmp_path):
  checkpoint.save_variables(str(tmp_path / 'converted'), _variables())
  for step in (10, 20):
    checkpoint.save_train_state(str(tmp_path / 'run'), step, _model_train_state(step), keep=3)
  for path, expected in ((tmp_path / 'converted', _variables()),
                         (tmp_path / 'run', _model_train_state(20)),  # the newest step
                         (tmp_path / 'run' / '10', _model_train_state(10)),
                         (tmp_path / 'run' / '10' / 'default', _model_train_state(10))):
    loaded = checkpoint.load_variables(str(path))
    assert set(loaded) == {'params', 'batch_stats'}  # no optimizer state
    for key in loaded:
      jax.tree.map(np.testing.assert_array_equal, loaded[key],
                   expected[key] if isinstance(expected, dict) else getattr(expected, key))
      assert all(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(loaded[key]))


def test_a_training_workdir_reads_its_newest_step_and_each_path_names_its_step(tmp_path):
  workdir = tmp_path / 'run'
  for step in (10, 20):
    checkpoint.save_train_state(str(workdir / 'checkpoints'), step, _model_train_state(step),
                                keep=3)
  (workdir / 'tensorboard').mkdir()  # what else a workdir holds
  loaded = checkpoint.load_variables(str(workdir))
  jax.tree.map(np.testing.assert_array_equal, loaded['params'],
               _model_train_state(20).params)
  steps = workdir / 'checkpoints'
  for path, expected in ((workdir, (steps / '20' / 'default', 20)),
                         (steps, (steps / '20' / 'default', 20)),
                         (steps / '10', (steps / '10' / 'default', 10)),
                         (steps / '10' / 'default', (steps / '10' / 'default', 10))):
    assert checkpoint.variables_item(str(path)) == (str(expected[0]), expected[1]), path
  checkpoint.save_variables(str(tmp_path / 'converted'), _variables())
  assert checkpoint.variables_item(str(tmp_path / 'converted')) == (
      str(tmp_path / 'converted'), None)
  (tmp_path / 'new_run' / 'checkpoints').mkdir(parents=True)  # started, nothing saved yet
  with pytest.raises(FileNotFoundError, match='new_run/checkpoints holds no complete '
                     'training checkpoint yet'):
    checkpoint.load_variables(str(tmp_path / 'new_run'))


def test_load_variables_names_a_path_without_a_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match='nowhere'):
    checkpoint.load_variables(str(tmp_path / 'nowhere'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='empty'):
    checkpoint.load_variables(str(tmp_path / 'empty'))


def test_load_variables_reads_a_state_saved_on_another_device_count(tmp_path):
  """Trained on 8 devices, evaluated on this process's devices (orbax's default restore
  refuses the topology change)."""
  from tests.conftest import run_on_eight_cpu_devices  # pylint: disable=import-outside-toplevel
  run_on_eight_cpu_devices(
      'import numpy as np\n'
      'from maskrcnn_jax import checkpoint\n'
      'from maskrcnn_jax.runtime import distributed\n'
      'state = {"step": np.int32(7), "params": {"w": np.arange(6.0).reshape(2, 3)},\n'
      '         "batch_stats": {}, "opt_state": {"m": np.zeros((2, 3))}}\n'
      'state = distributed.replicate(state, distributed.data_mesh())\n'
      f'checkpoint.save_train_state({str(tmp_path / "run")!r}, 7, state, keep=1)\n'
      'print("ok")\n', timeout=120)
  loaded = checkpoint.load_variables(str(tmp_path / 'run'))
  np.testing.assert_array_equal(loaded['params']['w'], np.arange(6.0).reshape(2, 3))


def test_train_metadata_is_kept_with_each_step(tmp_path):
  directory = str(tmp_path / 'run')
  history = {'step': [9, 10], 'total': [1.25, float('inf')], 'grad_norm': [3.0, 1e4]}
  checkpoint.save_train_state(directory, 10, _train_state(10), keep=2, metadata=history)
  checkpoint.save_train_state(directory, 20, _train_state(20), keep=2)
  assert checkpoint.train_steps(directory) == [10, 20]
  assert checkpoint.train_steps(str(tmp_path / 'nowhere')) == []
  assert checkpoint.train_metadata(directory, 10) == history
  assert checkpoint.train_metadata(directory, 20) == {}
