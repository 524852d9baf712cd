"""Every config file loads and is locked; schedules and ablations are what they claim."""

import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import numpy as np
import pytest

from maskrcnn_jax import config as config_lib
from maskrcnn_jax.data import transforms
from maskrcnn_jax.train import optimizer as optimizer_lib
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / 'configs'
CONFIG_NAMES = sorted(p.stem for p in CONFIGS.glob('*.py'))
BASES = ('shapes_demo', 'tiny', 'maskrcnn_r50_fpn_1x')

# Each ablation's changes as (flattened key, value), whatever its base.
ABLATIONS = {
    'roi_pool': {'model.roi_op': 'pool'},
    'roi_align_unaligned': {'model.roi_align.aligned': False},
    'sampling_ratio_1': {'model.roi_align.sampling_ratio': 1},
    'sampling_ratio_4': {'model.roi_align.sampling_ratio': 4},
    'softmax_mask': {'model.mask_loss': 'softmax'},
    'class_agnostic_mask': {'model.class_agnostic_mask': True},
    'resnet101': {'model.backbone.depth': 101},
    'noaug': {'model.rpn.box_loss': 'smooth_l1', 'model.rpn.smooth_l1_beta': 1.0 / 9.0,
              'model.roi_heads.box_loss': 'smooth_l1', 'model.roi_heads.smooth_l1_beta': 1.0,
              'data.train_min_sizes': ()},
}
ABLATION_NAMES = sorted(p.stem for p in (CONFIGS / 'ablations').glob('*.py'))


def _load(name, arg=None):
  return config_lib.load_config_file(CONFIGS / f'{name}.py', arg)


def _flatten(tree, prefix=''):
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[prefix + key] = value
  return flat


def _changed(config, base):
  """{key: value in config} for each flattened key whose value differs from base's."""
  new, old = _flatten(config.to_dict()), _flatten(base.to_dict())
  assert new.keys() == old.keys()
  return {k: new[k] for k in new if new[k] != old[k]}


def _check_config(config):
  assert config.model.num_classes > 0
  height, width = config.data.image_size
  assert height % 64 == 0 and width % 64 == 0, 'padded image sizes are multiples of 64'
  # Every image, portrait or landscape, at any training or test scale, gets a canvas.
  transforms.canvas_sizes(config.data)
  for size in ((10, 1000), (1000, 10), (500, 500), (480, 640), (640, 480)):
    for train in (False, True):
      canvas = transforms.choose_canvas(*size, config.data, train)
      assert canvas.height % 64 == 0 and canvas.width % 64 == 0
  with pytest.raises(AttributeError, match='nms_treshold'):
    config.model.rpn.nms_treshold = 0.5  # misspelled on purpose


@pytest.mark.parametrize('name', CONFIG_NAMES)
def test_config_loads_and_rejects_unknown_keys(name):
  _check_config(_load(name))


def test_every_ablation_file_is_listed_here():
  assert ABLATION_NAMES == sorted(ABLATIONS)


@pytest.mark.parametrize('base', BASES)
@pytest.mark.parametrize('name', sorted(ABLATIONS))
def test_ablation_changes_only_its_switch(name, base):
  config = _load(f'ablations/{name}', base)
  _check_config(config)
  expected = dict(ABLATIONS[name])
  if name == 'resnet101' and _load(base).train.init_checkpoint:
    expected['train.init_checkpoint'] = 'weights/resnet101_imagenet'
  if name == 'noaug':  # only what the base does not already have
    before = _flatten(_load(base).to_dict())
    expected = {k: v for k, v in expected.items() if before[k] != v}
  assert _changed(config, _load(base)) == expected


def test_ablation_default_base_is_the_1x_config():
  assert _load('ablations/roi_pool').to_dict() == _load('ablations/roi_pool',
                                                        'maskrcnn_r50_fpn_1x').to_dict()


def test_1x_is_detectron2s_schedule_on_the_default_model():
  config = _load('maskrcnn_r50_fpn_1x')
  assert set(_changed(config, config_lib.default_config())) == {
      'data.train_annotations', 'data.train_images', 'data.val_annotations',
      'data.val_images', 'train.init_checkpoint'}
  t, d = config.train, config.data
  assert (t.batch_size, t.num_steps, t.lr_steps) == (16, 90_000, (60_000, 80_000))
  assert (t.warmup_steps, t.warmup_factor) == (1000, 1e-3)
  assert (d.resize_mode, d.min_size, d.max_size) == ('shorter_side', 800, 1333)
  schedule = optimizer_lib.learning_rate_schedule(t)
  steps = [0, 500, 1000, 10_000, 59_999, 60_000, 70_000, 79_999, 80_000, 85_000]
  expected = [0.02 * 1e-3, 0.02 * (1e-3 * 0.5 + 0.5), 0.02, 0.02, 0.02, 0.002, 0.002, 0.002,
              0.0002, 0.0002]
  np.testing.assert_allclose([float(schedule(s)) for s in steps], expected, rtol=1e-5)


def test_default_recipe_is_detectron2s_1x_and_noaug_is_the_old_one():
  m = config_lib.default_config().model
  assert (m.rpn.box_loss, m.rpn.smooth_l1_beta) == ('l1', 0.0)  # SMOOTH_L1_BETA 0.0
  assert (m.roi_heads.box_loss, m.roi_heads.smooth_l1_beta) == ('l1', 0.0)
  assert config_lib.default_config().data.train_min_sizes == (640, 672, 704, 736, 768, 800)
  assert _changed(_load('ablations/noaug'), _load('maskrcnn_r50_fpn_1x')) == ABLATIONS['noaug']
  tv = _load('torchvision_r50_fpn').model
  assert (tv.rpn.box_loss, tv.rpn.smooth_l1_beta) == ('smooth_l1', 1.0 / 9.0)
  assert (tv.roi_heads.box_loss, tv.roi_heads.smooth_l1_beta) == ('smooth_l1', 1.0 / 9.0)


def test_3x_tpu_and_r101_schedules():
  three_x = _load('maskrcnn_r50_fpn_3x')
  assert _changed(three_x, _load('maskrcnn_r50_fpn_1x')) == {
      'train.num_steps': 270_000, 'train.lr_steps': (210_000, 250_000)}
  schedule = optimizer_lib.learning_rate_schedule(three_x.train)
  np.testing.assert_allclose([float(schedule(s)) for s in (200_000, 220_000, 260_000)],
                             [0.02, 0.002, 0.0002], rtol=1e-5)

  assert _changed(_load('maskrcnn_r101_fpn_3x'), three_x) == {
      'model.backbone.depth': 101, 'train.init_checkpoint': 'weights/resnet101_imagenet'}

  tpu = _load('maskrcnn_r50_fpn_tpu')
  assert (tpu.data.resize_mode, tpu.data.max_size, tuple(tpu.data.image_size)) == (
      'square', 1024, (1024, 1024))
  assert (tpu.model.dtype, tpu.train.batch_size) == ('bfloat16', 64)
  t = tpu.train
  assert (t.num_steps, t.lr_steps, t.warmup_steps) == (22_500, (15_000, 20_000), 250)
  schedule = optimizer_lib.learning_rate_schedule(t)
  np.testing.assert_allclose([float(schedule(s)) for s in (0, 250, 14_999, 15_000, 20_000)],
                             [0.08e-3, 0.08, 0.08, 0.008, 0.0008], rtol=1e-5)


def test_load_config_file_names_the_bad_path(tmp_path):
  missing = tmp_path / 'missing.py'
  with pytest.raises(FileNotFoundError, match='missing.py'):
    config_lib.load_config_file(missing)
  empty = tmp_path / 'no_function.py'
  empty.write_text('X = 1\n')
  with pytest.raises(AttributeError, match='no_function.py'):
    config_lib.load_config_file(empty)
  with pytest.raises(FileNotFoundError, match='no_such_base.py'):
    _load('ablations/roi_pool', 'no_such_base')


def test_base_after_colon_and_overrides_on_the_command_line(monkeypatch):
  argv = ['prog', f'--config={CONFIGS / "ablations" / "roi_pool.py"}:shapes_demo',
          '--config.model.roi_align.sampling_ratio=3']
  monkeypatch.setattr(sys, 'argv', argv)  # config_flags reads the overrides from sys.argv
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'a config file', flag_values=flag_values)
  flag_values(argv)
  config = flag_values.config
  assert _changed(config, _load('shapes_demo')) == {
      'model.roi_op': 'pool', 'model.roi_align.sampling_ratio': 3}


def test_unknown_override_on_the_command_line_is_an_error():
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / 'scripts' / 'predict.py'),
       f'--config={CONFIGS / "ablations" / "roi_pool.py"}:shapes_demo',
       '--config.model.rpn.nms_treshold=0.5', '--checkpoint=unused', 'unused.png'],
      cwd=REPO_ROOT, capture_output=True, text=True)
  assert result.returncode != 0
  assert 'nms_treshold' in result.stderr


def test_overrides_parse_without_config_when_the_default_is_the_package_defaults(
    monkeypatch):
  """What scripts/predict.py, evaluate.py and export.py rely on to apply overrides to a
  run's saved config: ml_collections defines the override flags from the default file."""
  argv = ['prog', '--config.model.num_classes=3', '--config.data.image_size=128,192']
  monkeypatch.setattr(sys, 'argv', argv)
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', config_lib.__file__, 'a config file',
                                  flag_values=flag_values)
  flag_values(argv)
  assert not flag_values['config'].present
  assert config_flags.get_override_values(flag_values['config']) == {
      'model.num_classes': 3, 'data.image_size': (128, 192)}
  assert _changed(flag_values.config, config_lib.default_config()) == {
      'model.num_classes': 3, 'data.image_size': (128, 192)}
  assert config_lib.get_config().to_dict() == config_lib.default_config().to_dict()
