"""Which model a foreign state dict holds, read from its keys, and `--kind` for it.

scripts/convert_weights.py converts three kinds of state dict, each told by the prefix
of its keys: a torchvision Mask R-CNN (or Keypoint R-CNN), an ImageNet ResNet, and a
Detectron2 Mask R-CNN. `check_kind` refuses a state dict of another kind than asked for
in one line that names the kind it holds.
"""

from typing import Iterable, Mapping

from maskrcnn_jax.convert import tables as tables_lib

# kind -> (the key prefix every state dict of that kind has, what it is).
KINDS = {
    'maskrcnn': ('backbone.body.', 'a torchvision Mask R-CNN'),
    'resnet': ('layer1.', 'an ImageNet ResNet'),
    'detectron2': ('backbone.bottom_up.', 'a Detectron2 Mask R-CNN'),
}


def guess_kind(keys: Iterable[str]) -> str | None:
  """The kind (`KINDS`) whose key prefix some of `keys` have; None for none."""
  keys = list(keys)
  for kind, (prefix, _) in KINDS.items():
    if any(key.startswith(prefix) for key in keys):
      return kind
  return None


def check_kind(state_dict: Mapping[str, object], kind: str,
               source: str = 'the state dict') -> None:
  """Raises a one-line ValueError unless `state_dict` has keys of `kind`.

  Args:
    state_dict: key -> array.
    kind: 'maskrcnn', 'resnet' or 'detectron2'.
    source: the file it came from, for the message.
  """
  prefix, what = KINDS[kind]
  if any(key.startswith(prefix) for key in state_dict):
    return
  found = guess_kind(state_dict)
  if found is not None:
    raise ValueError(f"{source} has no '{prefix}' keys: it looks like {KINDS[found][1]}; "
                     f'use --kind {found}')
  raise ValueError(f"{source} has no '{prefix}' keys, so it is not {what}; its keys are "
                   f'{tables_lib.key_list(state_dict)}')
