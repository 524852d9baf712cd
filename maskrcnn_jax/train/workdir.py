"""What a training run keeps beside its checkpoints, for resuming and for inference.

  <workdir>/config.json      the run's config, flat {'train.num_steps': 90000, ...}
  <workdir>/categories.json  {'source': annotation file, 'categories': [{'id', 'name'}]}
                             of classes 1..K, in class order
  <workdir>/checkpoints/     checkpoint.save_train_state's steps

Both files are written (by process 0) when training starts. A resumed run must have the
saved config except for `RESUMABLE_KEYS`, as Detectron2 keeps its config.yaml.
"""

import json
import logging
import os
from typing import Any, Sequence

import ml_collections

CONFIG_FILE = 'config.json'
CATEGORIES_FILE = 'categories.json'

# Keys that do not change what the checkpointed state means: the schedule's length and
# the bookkeeping around it, the learning rate (lowered to resume a diverged run), where
# the data lives and how fast it is read.
RESUMABLE_KEYS = frozenset({
    'train.num_steps', 'train.eval_every', 'train.log_every', 'train.checkpoint_every',
    'train.keep_checkpoints', 'train.init_checkpoint', 'train.base_lr', 'train.warmup_steps',
    'data.train_annotations', 'data.train_images', 'data.val_annotations',
    'data.val_images', 'data.tfds_data_dir', 'data.num_workers', 'data.prefetch',
    'eval.batch_size',
})


def flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'section.key': value} of `config`, with JSON's values (tuples become lists)."""
  flat = {}

  def walk(prefix, tree):
    for key, value in tree.items():
      if isinstance(value, dict):
        walk(f'{prefix}{key}.', value)
      else:
        flat[prefix + key] = value

  walk('', config.to_dict())
  return json.loads(json.dumps(flat, default=str))


def _write_json(path: str, value: Any) -> None:
  """Writes through a temporary file, so a killed process never leaves half a file."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f, indent=1, sort_keys=True)
  os.replace(path + '.tmp', path)


def check_resumed_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume `workdir` with a config differing outside `RESUMABLE_KEYS`.

  Raises ValueError naming each differing key with its saved and new values.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    logging.warning('%s not found (a run older than it): resuming without checking the '
                    'config', path)
    return
  with open(path) as f:
    saved = json.load(f)
  current = flat_config(config)
  # Keys only one side has come from another version of config.py, not from the user.
  unmatched = sorted(set(saved) ^ set(current))
  if unmatched:
    logging.warning('%s and this config differ in the keys they have (another version of '
                    'config.py?), not compared: %s', path, ', '.join(unmatched))
  changed = sorted(k for k in set(saved) & set(current)
                   if k not in RESUMABLE_KEYS and saved[k] != current[k])
  if changed:
    shown = '; '.join(f'{k}: {saved[k]!r} -> {current[k]!r}' for k in changed[:10])
    raise ValueError(
        f'{workdir} holds checkpoints of a run with another config ({path}): {shown}'
        f'{" ..." if len(changed) > 10 else ""}. Resume with the saved values, or start '
        f'a new --workdir; only {", ".join(sorted(RESUMABLE_KEYS))} may change on resume')


def save_run_files(workdir: str, config: ml_collections.ConfigDict,
                   category_ids: Sequence[int], class_names: Sequence[str],
                   source: str) -> None:
  """Writes config.json and categories.json (class c is entry c - 1) into `workdir`."""
  _write_json(os.path.join(workdir, CONFIG_FILE), flat_config(config))
  _write_json(os.path.join(workdir, CATEGORIES_FILE), {
      'source': source,
      'categories': [{'id': int(i), 'name': n} for i, n in zip(category_ids, class_names)]})


def find_categories(checkpoint_path: str) -> tuple[list[int], list[str]] | None:
  """(category ids, names) of the run a checkpoint path belongs to, or None.

  `checkpoint_path` is what load_variables takes: a workdir's checkpoints folder, one
  step of it or that step's item; categories.json is looked for up to 3 levels above.
  """
  directory = os.path.abspath(checkpoint_path)
  for _ in range(4):
    path = os.path.join(directory, CATEGORIES_FILE)
    if os.path.isfile(path) and os.path.isdir(os.path.join(directory, 'checkpoints')):
      with open(path) as f:
        categories = json.load(f)['categories']
      return [c['id'] for c in categories], [c['name'] for c in categories]
    directory = os.path.dirname(directory)
  return None
