"""Round trips and error cases of the variables checkpoint wrapper."""

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
