"""Shared test fixtures: paths to shipped and shared data, and one XLA compilation cache."""

import importlib.util
import os
import pathlib
import subprocess
import sys
import tempfile

# Many tests compile the same tiny model (in this process and in subprocesses, which
# inherit the environment): a session-wide persistent cache compiles each program once.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      tempfile.mkdtemp(prefix='maskrcnn_jax_xla_cache_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '1')

import ml_collections  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / 'tests' / 'fixtures'
COCO_TINY = (REPO_ROOT / '..' / 'shared' / 'data' / 'coco_tiny').resolve()


@pytest.fixture
def coco_tiny() -> pathlib.Path:
  """The real 50-image COCO val2017 slice beside the checkout, or a skip."""
  if not (COCO_TINY / 'annotations' / 'instances_val2017.json').is_file():
    pytest.skip(f'real COCO slice not found at {COCO_TINY} (it lives in ../shared/data)')
  return COCO_TINY


def load_config(name: str) -> ml_collections.ConfigDict:
  """`get_config()` of configs/<name>.py, as the scripts' --config flag loads it."""
  path = REPO_ROOT / 'configs' / f'{name}.py'
  spec = importlib.util.spec_from_file_location(f'configs_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def reduced_detectron2_config() -> ml_collections.ConfigDict:
  """configs/detectron2/mask_rcnn_R_50_FPN_1x.py at the Detectron2 recorders' widths.

  tests/tools/record_detectron2_convert.py builds Detectron2's model this narrow (5
  classes, stem 4 and res2 16 channels, FPN 16, box fc 32, mask convs 16).
  """
  spec = importlib.util.spec_from_file_location(
      'configs_detectron2_r50_1x', REPO_ROOT / 'configs' / 'detectron2' / 'mask_rcnn_R_50_FPN_1x.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  m = config.model
  m.num_classes = 5
  m.backbone.base_width = 4  # STEM_OUT_CHANNELS 4, RES2_OUT_CHANNELS 16
  m.fpn.channels = 16
  m.box_head.fc_dim = 32
  m.mask_head.conv_dim = 16
  return config


def run_on_eight_cpu_devices(script: str, timeout: int) -> None:
  """Runs `script` in a fresh Python with 8 simulated CPU devices; it must print 'ok'.

  A fresh process because jax fixes its device count when it first initialises.
  """
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith('ok')
