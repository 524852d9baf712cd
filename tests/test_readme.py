"""The README as a user reads it: its Python snippets run as written, and its commands
name scripts, flags and config keys that exist."""

import json
import os
import pathlib
import re

import numpy as np
from PIL import Image
import pytest

from maskrcnn_jax import checkpoint
from maskrcnn_jax import config as config_lib
from maskrcnn_jax.data import shapes
from maskrcnn_jax.data import transforms
from maskrcnn_jax.inference import export
from maskrcnn_jax.train import loop
from tests.conftest import load_config
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / 'README.md').read_text()
# Sources that define the flags a script takes besides its own.
SHARED_FLAG_SOURCES = [REPO_ROOT / 'scripts' / 'distributed_flags.py',
                       REPO_ROOT / 'maskrcnn_jax' / 'cli.py',
                       *sorted((REPO_ROOT / 'benchmarks').glob('*.py'))]


def _python_snippets() -> list[str]:
  return re.findall(r'```python\n(.*?)```', README, re.S)


def _commands() -> list[tuple[str, str]]:
  """(script path, its arguments) of every `python scripts/<name>.py ...` in the README."""
  text = README.replace('\\\n', ' ')
  return [(m.group(1), m.group(2)) for m in
          re.finditer(r'python3? (scripts/\w+\.py)([^`\n]*)', text)]


def test_commands_name_scripts_flags_and_config_keys_that_exist():
  commands = _commands()
  assert len(commands) >= 15, commands
  defaults = config_lib.default_config()
  shared = ''.join(path.read_text() for path in SHARED_FLAG_SOURCES)
  for script, arguments in commands:
    path = REPO_ROOT / script
    assert path.is_file(), script
    source = path.read_text() + shared
    for flag in set(re.findall(r'(?:^|\s)--([a-z_]+)\b(?!\.)', arguments)) - {'help'}:
      assert f"'{flag}'" in source or f"'--{flag}'" in source, (script, flag)
    for key in re.findall(r'--config\.([\w.]+)=', arguments):
      value = defaults
      for part in key.split('.'):
        assert part in value, (script, key)
        value = value[part]
    for config_file in re.findall(r'(configs/[\w/]+\.py)', arguments):
      assert (REPO_ROOT / config_file).is_file(), (script, config_file)


def _write_three_class_split(root: pathlib.Path, split: str, num_images: int
                             ) -> tuple[str, str]:
  """A shapes split at data/<split>.json and data/<split>_images, its 4th category gone.

  The README's example dataset has 3 categories.
  """
  annotations, images = shapes.write_split(str(root / 'shapes'), split, num_images, 64,
                                           seed=0)
  with open(annotations) as f:
    data = json.load(f)
  last = max(c['id'] for c in data['categories'])
  data['categories'] = [c for c in data['categories'] if c['id'] != last]
  data['annotations'] = [a for a in data['annotations'] if a['category_id'] != last]
  (root / 'data').mkdir(exist_ok=True)
  with open(root / 'data' / f'{split}.json', 'w') as f:
    json.dump(data, f)
  os.rename(images, root / 'data' / f'{split}_images')
  return f'data/{split}.json', f'data/{split}_images'


@pytest.mark.slow
def test_python_snippets_run_as_written(tmp_path, monkeypatch):
  """Training, prediction and serving, in the README's order, in one namespace."""
  train_snippet, predict_snippet, serve_snippet = _python_snippets()
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'configs').symlink_to(REPO_ROOT / 'configs')  # run from the repository root
  _write_three_class_split(tmp_path, 'train', 8)
  _write_three_class_split(tmp_path, 'val', 4)

  trained = {}
  train_and_evaluate = loop.train_and_evaluate

  def tiny_run(config, workdir):
    """The snippet's config as it set it, trained as configs/tiny.py for 2 steps."""
    trained['config'] = config
    tiny = load_config('tiny')
    for key in ('train_annotations', 'train_images', 'val_annotations', 'val_images'):
      tiny.data[key] = config.data[key]
    tiny.model.num_classes = config.model.num_classes
    tiny.train.num_steps = 2
    return train_and_evaluate(tiny, workdir)

  monkeypatch.setattr(loop, 'train_and_evaluate', tiny_run)
  namespace = {}
  exec(train_snippet, namespace)  # pylint: disable=exec-used
  config = trained['config']
  assert (config.data.train_annotations, config.data.val_images) == ('data/train.json',
                                                                     'data/val_images')
  assert (config.model.num_classes, config.train.batch_size, config.train.base_lr) == (
      3, 8, 0.01)
  assert config.data.image_size == load_config('maskrcnn_r50_fpn_1x').data.image_size
  result = namespace['result']
  assert result['step'] == 2 and 0 <= result['eval']['bbox']['AP'] <= 1

  os.makedirs('workdir')
  os.rename('runs/mine', 'workdir/demo')
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (48, 80, 3), np.uint8)).save('image1.jpg')
  exec(predict_snippet, namespace)  # pylint: disable=exec-used
  detections = namespace['detections']
  num = len(detections['scores'])
  assert detections['boxes'].shape == (num, 4)
  assert detections['masks'].shape == (num, 48, 80)
  assert namespace['config'].model.num_classes == 3

  # What the README's export command writes, for the serving snippet to read.
  run_config = config_lib.load_run_config('workdir/demo/checkpoints')
  canvas = tuple(transforms.canvas_sizes(run_config.data)[0])
  variables = checkpoint.load_variables('workdir/demo/checkpoints')
  export.save('exported', export.export_stablehlo(run_config, variables, 1, canvas),
              export.metadata(run_config, 1, canvas, None, None, 'stablehlo'))
  exec(serve_snippet, namespace)  # pylint: disable=exec-used
  served = namespace['detections']
  assert len(served) == 1
  np.testing.assert_allclose(served[0]['boxes'], detections['boxes'], atol=1e-3)
  np.testing.assert_allclose(served[0]['scores'], detections['scores'], atol=1e-5)
