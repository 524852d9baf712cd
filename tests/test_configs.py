"""Every config file loads, and an unknown key is an error, in code or on the command line."""

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.conftest import load_config

CONFIG_NAMES = sorted(p.stem for p in (REPO_ROOT / 'configs').glob('*.py'))


@pytest.mark.parametrize('name', CONFIG_NAMES)
def test_config_loads_and_rejects_unknown_keys(name):
  config = load_config(name)
  assert config.model.num_classes > 0
  height, width = config.data.image_size
  assert height % 64 == 0 and width % 64 == 0, 'padded image sizes are multiples of 64'
  with pytest.raises(AttributeError, match='nms_treshold'):
    config.model.rpn.nms_treshold = 0.5  # misspelled on purpose


def test_unknown_override_on_the_command_line_is_an_error():
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / 'scripts' / 'predict.py'),
       f'--config={REPO_ROOT / "configs" / "shapes_demo.py"}',
       '--config.model.rpn.nms_treshold=0.5', '--checkpoint=unused', 'unused.png'],
      cwd=REPO_ROOT, capture_output=True, text=True)
  assert result.returncode != 0
  assert 'nms_treshold' in result.stderr
