"""A training run's saved config.json: found from any checkpoint path of the run, rebuilt
exactly (types included) for every config file, and compared with another config."""

import json
import logging

import pytest

from maskrcnn_jax import config as config_lib
from maskrcnn_jax.train import workdir as workdir_lib
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / 'configs'
# Every config file, ablations on each of the bases tests/test_configs.py uses.
CONFIG_FILES = sorted(
    [(str(p.relative_to(CONFIGS)), None)
     for p in list(CONFIGS.glob('*.py')) + list(CONFIGS.glob('detectron2/*.py'))]
    + [(str(p.relative_to(CONFIGS)), base) for p in CONFIGS.glob('ablations/*.py')
       for base in (None, 'tiny', 'shapes_demo')], key=str)


def _same(a, b, path=''):
  """Asserts `a` and `b` are equal with the same types all the way down."""
  assert type(a) is type(b), (path, a, b)
  if isinstance(a, dict):
    assert a.keys() == b.keys(), path
    for key in a:
      _same(a[key], b[key], f'{path}.{key}')
  elif isinstance(a, (tuple, list)):
    assert len(a) == len(b), path
    for i, (x, y) in enumerate(zip(a, b)):
      _same(x, y, f'{path}[{i}]')
  else:
    assert a == b, (path, a, b)


def _save(workdir, config):
  workdir_lib.save_run_files(str(workdir), config, [1], ['thing'], 'train.json')
  (workdir / 'checkpoints').mkdir()


@pytest.mark.parametrize('name, base', CONFIG_FILES)
def test_a_saved_config_comes_back_exactly(tmp_path, name, base):
  config = config_lib.load_config_file(CONFIGS / name, base)
  _save(tmp_path, config)
  loaded = workdir_lib.load_run_config(str(tmp_path), config_lib.default_config())
  _same(loaded.to_dict(), config.to_dict())
  assert loaded.is_locked
  with pytest.raises(AttributeError):
    loaded.model.num_clases = 3  # pylint: disable=attribute-defined-outside-init


def test_the_round_trip_keeps_tuples_floats_and_nested_tuples(tmp_path):
  config = config_lib.load_config_file(CONFIGS / 'tiny.py')
  config.train.base_lr = 1  # an int given to a float key stays a float
  config.data.extra_canvases = ((64, 64),)
  config.data.image_size = (128, 128)
  _save(tmp_path, config)
  assert json.loads((tmp_path / 'config.json').read_text())['data.extra_canvases'] == [[64, 64]]
  loaded = workdir_lib.load_run_config(str(tmp_path), config_lib.default_config())
  assert loaded.data.extra_canvases == ((64, 64),)
  assert type(loaded.data.extra_canvases[0]) is tuple
  assert loaded.train.base_lr == 1.0 and type(loaded.train.base_lr) is float
  assert loaded.data.train_min_sizes == (640, 672, 704, 736, 768, 800)  # not in tiny.py


def test_an_older_run_keeps_new_keys_at_their_defaults_and_unknown_keys_are_named(
    tmp_path, caplog):
  config = config_lib.load_config_file(CONFIGS / 'tiny.py')
  _save(tmp_path, config)
  saved = json.loads((tmp_path / 'config.json').read_text())
  del saved['eval.tensorboard_images']  # a key config.py gained after the run
  saved['model.retired_key'] = 3  # a key config.py has since dropped
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  with caplog.at_level(logging.WARNING):
    loaded = workdir_lib.load_run_config(str(tmp_path), config_lib.default_config())
  assert loaded.eval.tensorboard_images == config_lib.default_config().eval.tensorboard_images
  assert loaded.model.fpn.channels == 16
  assert 'model.retired_key' in caplog.text


def test_a_value_of_another_type_names_the_key(tmp_path):
  _save(tmp_path, config_lib.default_config())
  saved = json.loads((tmp_path / 'config.json').read_text())
  saved['train.batch_size'] = 'sixteen'
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  with pytest.raises(ValueError, match=r"config.json: train.batch_size = 'sixteen' does not "
                     'fit the key of this version of maskrcnn_jax/config.py'):
    workdir_lib.load_run_config(str(tmp_path), config_lib.default_config())
  with pytest.raises(FileNotFoundError, match='is not a training run'):
    workdir_lib.load_run_config(str(tmp_path / 'checkpoints'), config_lib.default_config())


def test_the_run_is_found_from_any_checkpoint_path_of_it(tmp_path):
  run = tmp_path / 'run'
  run.mkdir()
  _save(run, config_lib.default_config())
  (run / 'checkpoints' / '500' / 'default').mkdir(parents=True)
  for path in (run, run / 'checkpoints', run / 'checkpoints' / '500',
               run / 'checkpoints' / '500' / 'default'):
    assert workdir_lib.find_run(str(path)) == str(run), path
  converted = tmp_path / 'converted'  # save_variables' directory: no run around it
  converted.mkdir()
  assert workdir_lib.find_run(str(converted)) is None
  (run / 'config.json').unlink()  # a run older than config.json
  assert workdir_lib.find_run(str(run / 'checkpoints')) is None
  assert workdir_lib.find_categories(str(run / 'checkpoints')) == ([1], ['thing'])


def test_differences_and_which_change_predictions():
  saved = config_lib.load_config_file(CONFIGS / 'tiny.py')
  config = config_lib.load_config_file(CONFIGS / 'tiny.py')
  config.model.num_classes = 80
  config.data.image_size = (128, 128)
  config.train.batch_size = 2
  config.data.val_annotations = 'val.json'
  assert workdir_lib.config_differences(saved, config) == {
      'data.image_size': ((64, 64), (128, 128)), 'data.val_annotations': ('', 'val.json'),
      'model.num_classes': (4, 80), 'train.batch_size': (16, 2)}
  changing = {'model.num_classes', 'data.image_size', 'data.min_size', 'eval.mask_threshold',
              'eval.pad_to_multiple', 'data.resize_backend'}
  for key in workdir_lib.flat_config(config):
    assert workdir_lib.changes_inference(key) == (key in changing or key.startswith(
        ('model.', 'data.max_size', 'data.resize_mode', 'data.extra_canvases',
         'data.transpose_portrait', 'eval.mask_paste', 'eval.keypoint_oks_sigmas'))), key
