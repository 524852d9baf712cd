"""The package's import rules (docs/design.md, "The house"), read from the source with ast.

ops/ and model/ never ask which backend they run on nor import the runtime; data/ and
convert/ never import jax; imports between the subpackages point one way.
"""

import ast
import pathlib

import pytest

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / 'maskrcnn_jax'
# What each subpackage may import of maskrcnn_jax (besides itself).
ALLOWED = {
    'ops': set(),
    'model': {'ops', 'image_info'},
    'data': {'image_info'},
    'convert': set(),
    'runtime': set(),
    'inference': {'ops', 'model', 'data', 'runtime', 'image_info'},
    'evaluation': {'ops', 'model', 'data', 'runtime', 'inference', 'image_info'},
    'train': {'ops', 'model', 'data', 'runtime', 'inference', 'evaluation', 'image_info',
              'checkpoint'},
}
# Third-party roots a host-side subpackage must not import (they would start XLA).
NO_JAX = ('jax', 'jaxlib', 'flax', 'optax')


def _imports(path: pathlib.Path) -> set[str]:
  """Every module a file imports, anywhere in it (dotted names)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f'{node.module}.{alias.name}' for alias in node.names)
  return names


def _files(subpackage: str) -> list[pathlib.Path]:
  return sorted((PACKAGE / subpackage).glob('*.py'))


@pytest.mark.parametrize('subpackage', sorted(ALLOWED))
def test_imports_between_subpackages_point_one_way(subpackage):
  for path in _files(subpackage):
    used = {name.split('.')[1] for name in _imports(path)
            if name.startswith('maskrcnn_jax.') and name.count('.') >= 1}
    used.discard(subpackage)
    assert used <= ALLOWED[subpackage], (path.name, used - ALLOWED[subpackage])


@pytest.mark.parametrize('subpackage', ['ops', 'model'])
def test_ops_and_model_never_ask_for_the_backend(subpackage):
  for path in _files(subpackage):
    text = path.read_text()
    assert 'default_backend' not in text and 'jax.devices' not in text, path.name


@pytest.mark.parametrize('subpackage', ['data', 'convert'])
def test_host_side_subpackages_never_import_jax(subpackage):
  for path in _files(subpackage):
    roots = {name.split('.')[0] for name in _imports(path)}
    assert not roots & set(NO_JAX), (path.name, roots & set(NO_JAX))


def test_the_top_level_keeps_a_few_shared_modules():
  assert sorted(p.name for p in PACKAGE.glob('*.py')) == [
      '__init__.py', 'checkpoint.py', 'cli.py', 'config.py', 'image_info.py']
