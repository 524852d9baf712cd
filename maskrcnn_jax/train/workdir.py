"""What a training run keeps beside its checkpoints, for resuming and for inference.

  <workdir>/config.json      the run's config, flat {'train.num_steps': 90000, ...}
  <workdir>/categories.json  {'source': annotation file, 'categories': [{'id', 'name'}]}
                             of classes 1..K, in class order
  <workdir>/checkpoints/     checkpoint.save_train_state's steps

Both files are written (by process 0) when training starts. A resumed run must have the
saved config except for `RESUMABLE_KEYS`, as Detectron2 keeps its config.yaml. Inference
scripts given a run's checkpoint find the run (`find_run`) and rebuild its config
(`load_run_config`).
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
# Sections and keys that do not change what a trained model computes on an image at
# inference: the training recipe, the data's location and the evaluation's machinery.
INFERENCE_NEUTRAL_PREFIXES = (
    'train.', 'data.train_', 'data.val_', 'data.tfds_', 'data.random_flip',
    'data.large_scale_jitter', 'data.lsj_scale_range', 'data.filter_empty_train',
    'data.min_train_keypoints', 'data.corrupt_images', 'data.num_workers', 'data.prefetch',
    'data.dataset', 'data.max_instances', 'data.mask_size', 'data.num_keypoints',
    'eval.batch_size', 'eval.engine', 'eval.host_workers', 'eval.coco_eval_workers',
    'eval.tensorboard_images',
)


def _flat_values(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'section.key': value} of `config`, its values as they are."""
  flat = {}

  def walk(prefix, tree):
    for key, value in tree.items():
      if isinstance(value, dict):
        walk(f'{prefix}{key}.', value)
      else:
        flat[prefix + key] = value

  walk('', config.to_dict())
  return flat


def flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'section.key': value} of `config`, with JSON's values (tuples become lists)."""
  return json.loads(json.dumps(_flat_values(config), default=str))


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


def _run_directory(checkpoint_path: str, run_file: str) -> str | None:
  """The workdir holding `run_file` and checkpoints/ at or up to 3 levels above the path."""
  directory = os.path.abspath(checkpoint_path)
  for _ in range(4):
    if os.path.isfile(os.path.join(directory, run_file)) and os.path.isdir(
        os.path.join(directory, 'checkpoints')):
      return directory
    directory = os.path.dirname(directory)
  return None


def find_categories(checkpoint_path: str) -> tuple[list[int], list[str]] | None:
  """(category ids, names) of the run a checkpoint path belongs to, or None.

  `checkpoint_path` is what load_variables takes: a workdir, its checkpoints folder, one
  step of it or that step's item; categories.json is looked for up to 3 levels above.
  """
  directory = _run_directory(checkpoint_path, CATEGORIES_FILE)
  if directory is None:
    return None
  with open(os.path.join(directory, CATEGORIES_FILE)) as f:
    categories = json.load(f)['categories']
  return [c['id'] for c in categories], [c['name'] for c in categories]


def find_run(checkpoint_path: str) -> str | None:
  """The training workdir a checkpoint path belongs to (it holds config.json), or None.

  Found as `find_categories` finds categories.json: `checkpoint_path` is the workdir,
  its checkpoints folder, one step of it or that step's item. None for anything else,
  e.g. a `save_variables` directory of converted weights.
  """
  return _run_directory(checkpoint_path, CONFIG_FILE)


def _from_json(value: Any, like: Any) -> Any:
  """A config.json value with the type of the config field it fills: lists become tuples.

  `like` is the field's default value; JSON keeps ints, floats, strings and None apart.
  """
  if isinstance(value, list):
    items = like if isinstance(like, (tuple, list)) and len(like) == len(value) else ()
    converted = [_from_json(v, items[i] if items else None) for i, v in enumerate(value)]
    return list(converted) if isinstance(like, list) else tuple(converted)
  return value


def load_run_config(workdir: str, defaults: ml_collections.ConfigDict
                    ) -> ml_collections.ConfigDict:
  """The config a training run saved in `<workdir>/config.json`, as it was saved.

  Args:
    workdir: the run's directory (`find_run`).
    defaults: `maskrcnn_jax.config.default_config()` (passed in: train/ does not import
      the top-level config module); each saved value replaces its key there, converted
      to the field's type (tuples stay tuples), so keys newer than the run keep their
      defaults. A saved key that config.py no longer has is logged and skipped.

  Returns:
    A locked ConfigDict, equal (types included) to the config the run saved.

  Raises:
    FileNotFoundError: no config.json in `workdir`.
    ValueError: a saved value cannot fill its key (config.py changed its type).
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found: {workdir} is not a training run')
  with open(path) as f:
    saved = json.load(f)
  if not isinstance(saved, dict):
    raise ValueError(f'{path}: not a flat config ({{"section.key": value}})')
  config = defaults.copy_and_resolve_references()
  unknown = []
  for key, value in saved.items():
    *sections, name = key.split('.')
    parent = config
    for section in sections:
      parent = parent.get(section) if isinstance(parent, ml_collections.ConfigDict) else None
    if not isinstance(parent, ml_collections.ConfigDict) or name not in parent:
      unknown.append(key)
      continue
    try:
      parent[name] = _from_json(value, parent[name])
    except (TypeError, ValueError) as error:
      raise ValueError(f'{path}: {key} = {value!r} does not fit the key of this version of '
                       f'maskrcnn_jax/config.py ({error}); pass --config explicitly'
                       ) from error
  if unknown:
    logging.warning('%s has keys this version of maskrcnn_jax/config.py does not, ignored: '
                    '%s', path, ', '.join(sorted(unknown)))
  config.lock()
  return config


def changes_inference(key: str) -> bool:
  """Whether a flat config key can change what a trained model predicts for an image."""
  return not key.startswith(INFERENCE_NEUTRAL_PREFIXES)


def config_differences(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict
                       ) -> dict[str, tuple[Any, Any]]:
  """{flat key: (saved value, value in `config`)} of every key where the two differ.

  Keys only one of them has are left out (another version of config.py).
  """
  old, new = _flat_values(saved), _flat_values(config)
  return {k: (old[k], new[k]) for k in sorted(set(old) & set(new)) if old[k] != new[k]}
