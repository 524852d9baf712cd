"""Shared test fixtures: paths to shipped and shared data."""

import pathlib

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
