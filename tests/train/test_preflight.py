"""The training preflight: each input that cannot train is refused in one line naming its
key and the fix, before the model is built and before anything is written into the
workdir."""

import json
import os
import subprocess
import sys

import jax
import pytest

from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import shapes
from maskrcnn_jax.train import loop
from maskrcnn_jax.train import preflight
from maskrcnn_jax.train import step as step_lib
from tests.conftest import load_config
from tests.conftest import REPO_ROOT


@pytest.fixture(name='data_root', scope='module')
def _data_root(tmp_path_factory):
  """A 4-image shapes train split and a 2-image val split, and a train file without
  annotations."""
  root = tmp_path_factory.mktemp('shapes')
  train = shapes.write_split(str(root), 'train', 4, 64, seed=0)
  val = shapes.write_split(str(root), 'val', 2, 64, seed=0)
  with open(train[0]) as f:
    coco = json.load(f)
  coco['annotations'] = []
  with open(root / 'no_annotations.json', 'w') as f:
    json.dump(coco, f)
  coco['images'] = []
  with open(root / 'no_images.json', 'w') as f:
    json.dump(coco, f)
  return root, train, val


@pytest.fixture(name='no_model')
def _no_model(monkeypatch):
  """Fails the test if training gets as far as building the model."""
  def refuse(*args, **kwargs):
    raise AssertionError('the model was built before the input was refused')
  monkeypatch.setattr(step_lib, 'create_train_state', refuse)


def _config(data_root):
  root, (train_annotations, train_images), (val_annotations, val_images) = data_root
  del root
  c = load_config('tiny')
  c.data.train_annotations, c.data.train_images = train_annotations, train_images
  c.data.val_annotations, c.data.val_images = val_annotations, val_images
  c.train.num_steps = 2
  return c


def _set(config, key, value):
  *sections, name = key.split('.')
  parent = config
  for section in sections:
    parent = parent[section]
  parent[name] = value


@pytest.mark.parametrize('changes, device_count, message', [
    ({'data.train_annotations': 'no_annotations.json'}, 1,
     'no_annotations.json: no image to train on: all 4 images have no (non-crowd) instance '
     'and data.filter_empty_train drops them; give data.train_annotations a file whose '
     '"annotations" list has instances'),
    ({'data.train_annotations': 'no_annotations.json', 'data.filter_empty_train': False}, 1,
     'no_annotations.json: its 4 images have no instance to train on'),
    ({'data.val_annotations': 'no_images.json'}, 1,
     'no_images.json: no image to evaluate on; give data.val_annotations a split with '
     'images'),
    ({'train.batch_size': 0}, 1, 'train.batch_size must be positive; got 0'),
    ({'train.batch_size': 3}, 2,
     'train.batch_size = 3 must be a multiple of the 2 devices (each takes an equal share '
     'of every step): e.g. --config.train.batch_size=4'),
    ({'eval.batch_size': 3}, 2, 'eval.batch_size = 3 must be a multiple of the 2 devices'),
    ({'eval.batch_size': 0}, 1, 'eval.batch_size must be positive; got 0'),
    ({'train.log_every': 0}, 1, 'train.log_every must be positive (steps); got 0'),
    ({'train.checkpoint_every': 0}, 1, 'train.checkpoint_every must be positive'),
    ({'data.image_size': (96, 96), 'data.min_size': 96, 'data.max_size': 96}, 1,
     'data.image_size = (96, 96): canvas sides must be positive multiples of 64 (the stride '
     'of the coarsest FPN level, P6); use 128,128'),
    ({'data.image_size': (256,)}, 1,
     'data.image_size: a canvas is (height, width), two integers; got (256,) (on the '
     'command line: --config.data.image_size=HEIGHT,WIDTH)'),
    ({'data.extra_canvases': ((32, 64),)}, 1,
     'data.extra_canvases = (32, 64): canvas sides must be positive multiples of 64'),
    ({'data.max_size': 128}, 1,  # 64 x 64 images resize to 128 x 128 in square mode
     'fits no canvas of data.image_size / data.extra_canvases ((64, 64),); raise '
     'data.image_size or lower data.min_size / data.max_size'),
])
def test_refused_before_the_model_and_the_workdir(data_root, no_model, monkeypatch, tmp_path,
                                                  changes, device_count, message):
  del no_model
  config = _config(data_root)
  for key, value in changes.items():
    if isinstance(value, str) and value.endswith('.json'):
      value = str(data_root[0] / value)
      message = message.replace(os.path.basename(value), value)
    _set(config, key, value)
  monkeypatch.setattr(jax, 'device_count', lambda: device_count)
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError) as raised:
    loop.train_and_evaluate(config, str(workdir))
  assert message in str(raised.value)
  assert '\n' not in str(raised.value)
  assert not workdir.exists() or not list(workdir.iterdir())


def test_an_image_that_fits_no_canvas_is_named_with_the_keys(data_root):
  config = _config(data_root)
  config.data.max_size = 128  # square mode: 64 x 64 images resize to 128 x 128
  train_set = pipeline.load_split(config.data, 'train')
  with pytest.raises(ValueError, match=r'instances_train.json: image id 1 \(.*000001.png\): '
                     r'an image of 64 x 64 resizes to 128 x 128 and fits no canvas .* raise '
                     r'data.image_size or lower data.min_size / data.max_size'):
    preflight.check_datasets(config, train_set, None)


def test_a_valid_config_passes(data_root):
  config = _config(data_root)
  preflight.check_config(config, 1)
  train_set = pipeline.load_split(config.data, 'train')
  val_set = pipeline.load_split(config.data, 'val')
  preflight.check_datasets(config, train_set, val_set)
  preflight.check_canvases(load_config('maskrcnn_r50_fpn_1x'))


def test_check_writable(tmp_path):
  preflight.check_writable(str(tmp_path / 'new' / 'eval'), '--workdir')
  assert (tmp_path / 'new' / 'eval').is_dir()
  (tmp_path / 'file').write_text('')
  with pytest.raises(ValueError, match=f'--workdir={tmp_path / "file" / "eval"}: cannot write '
                     'there .*; choose a folder you can write to'):
    preflight.check_writable(str(tmp_path / 'file' / 'eval'), '--workdir')


def test_train_script_refuses_in_one_line_and_writes_nothing(data_root, tmp_path):
  """As a user meets it: the command's exit status, its one line, an untouched workdir."""
  _, (annotations, images), _ = data_root
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / 'scripts' / 'train.py'),
       f'--config={REPO_ROOT / "configs" / "tiny.py"}', f'--workdir={workdir}',
       f'--config.data.train_annotations={annotations}',
       f'--config.data.train_images={images}', '--config.train.batch_size=0'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 1, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines()
            if line and not (line[0] in 'IWE' and line[1:5].isdigit())]
  assert errors == ['train.py: error: train.batch_size must be positive; got 0',
                    '(--verbose or MASKRCNN_JAX_VERBOSE=1 prints the traceback)']
  assert not workdir.exists()
