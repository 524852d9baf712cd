"""Shared test fixtures: paths to shipped and shared data."""

import importlib.util
import pathlib

import ml_collections
import pytest

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
