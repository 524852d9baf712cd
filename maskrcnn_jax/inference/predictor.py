"""`Predictor`: images of any size in, detections in original-image pixels out.

`check_variables` compares a checkpoint's variables with the model a config builds,
before anything is compiled.
"""

from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from maskrcnn_jax import image_info
from maskrcnn_jax.data import transforms
from maskrcnn_jax.inference import keypoint_decoding
from maskrcnn_jax.inference import serving
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.runtime import compiler


# The config key most likely behind a variable of another shape, by where it lies, the
# most upstream modules first: a change there reshapes the inputs of what follows.
_SHAPE_KEYS = (
    ('backbone/', 'model.backbone (depth, base_width, groups, width_per_group)'),
    ('fpn/', 'model.fpn.channels'),
    ('rpn/cls_logits/', 'model.anchors.aspect_ratios'),
    ('rpn/bbox_pred/', 'model.anchors.aspect_ratios'),
    ('rpn/', 'model.fpn.channels'),
    ('box_head/cls_score/', 'model.num_classes'),
    ('box_head/bbox_pred/', 'model.num_classes'),
    ('box_head/', 'model.box_head (fc_dim, pooled_size)'),
    ('mask_head/mask_fcn_logits/', 'model.num_classes or model.class_agnostic_mask'),
    ('mask_head/', 'model.mask_head (conv_dim, pooled_size)'),
    ('keypoint_head/kps_score_lowres/', 'model.keypoint_head.num_keypoints'),
    ('keypoint_head/', 'model.keypoint_head (conv_dim, pooled_size)'),
)
# ... and behind a variable only one side has.
_PRESENCE_KEYS = (
    ('backbone/', 'model.backbone (depth, norm)'),
    ('mask_head/', 'model.mask_head (enabled, num_convs)'),
    ('keypoint_head/', 'model.keypoint_head (enabled, num_convs)'),
)


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{'params/box_head/cls_score/kernel': shape} of every array of a variables tree."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): tuple(np.shape(leaf))
          for path, leaf in leaves}


def _rank(path: str) -> tuple[int, bool, str]:
  """Upstream modules first (`_SHAPE_KEYS` order), kernels before biases, then by path."""
  module = path.split('/', 1)[-1] + '/'
  ranks = [i for i, (prefix, _) in enumerate(_SHAPE_KEYS) if module.startswith(prefix)]
  return (ranks[0] if ranks else len(_SHAPE_KEYS), path.endswith('/bias'), path)


def _likely_key(path: str, keys: tuple[tuple[str, str], ...]) -> str:
  module = path.split('/', 1)[-1] + '/'
  return next((key for prefix, key in keys if module.startswith(prefix)), 'the model config')


def _more(count: int) -> str:
  return f' (and {count} more)' if count else ''


def check_variables(config: ml_collections.ConfigDict, variables: Any,
                    source: str = 'the variables') -> None:
  """Raises ValueError unless `variables` fit `MaskRCNN(config.model)` exactly.

  The model's variable shapes come from `jax.eval_shape` of its init (traced, never
  compiled). The message is one line: the first differing variable path, both shapes
  and the config key most likely behind it.

  Args:
    config: a full config (`model` and `data.image_size` are read).
    variables: {'params': ..., 'batch_stats': ...} arrays (anything with a shape).
    source: what holds them, for the message (a checkpoint path).
  """
  height, width = (int(v) for v in config.data.image_size)
  expected = _flat_shapes(jax.eval_shape(
      mask_rcnn.MaskRCNN(config.model).init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, height, width, 3), np.uint8),
      jax.ShapeDtypeStruct((1, image_info.SIZE), np.float32)))
  found = _flat_shapes(variables)
  missing = sorted(set(expected) - set(found), key=_rank)
  if missing:
    key = _likely_key(missing[0], _PRESENCE_KEYS)
    raise ValueError(f'{source} lacks the variable {missing[0]}{_more(len(missing) - 1)} '
                     f"that this config's model has: check {key} against the config that "
                     'trained it')
  extra = sorted(set(found) - set(expected), key=_rank)
  if extra:
    key = _likely_key(extra[0], _PRESENCE_KEYS)
    raise ValueError(f'{source} has the variable {extra[0]}{_more(len(extra) - 1)} that '
                     f"this config's model has not: check {key} against the config that "
                     'trained it')
  differ = sorted((p for p in expected if expected[p] != found[p]), key=_rank)
  if not differ:
    return
  # A variable whose own output axis differs names the cause; its successors differ
  # only in their input axes.
  path = next((p for p in differ if expected[p][-1:] != found[p][-1:]), differ[0])
  key = _likely_key(path, _SHAPE_KEYS)
  if '/cls_score/' in path and found[path][-1:] != expected[path][-1:]:
    key += (f' (the checkpoint has {found[path][-1] - 1} classes, this config '
            f'{config.model.num_classes})')  # K classes and the background
  raise ValueError(
      f'{source}: variable {path} has shape {found[path]} but the model of this config '
      f'needs {expected[path]}{_more(len(differ) - 1)}: check {key} against the config '
      'that trained it')


def _keypoints(outputs: dict[str, np.ndarray], index: int, original_hw: tuple[int, int],
               info: np.ndarray) -> dict[str, np.ndarray]:
  """`keypoints` [n, K, 3] and `keypoint_scores` [n, K] of one image's valid detections."""
  keep = np.asarray(outputs['valid'][index], bool)
  keypoints, scores = keypoint_decoding.keypoints_in_original(
      outputs['keypoint_heatmaps'][index][keep], outputs['boxes'][index][keep],
      bool(image_info.transposed(info)),
      (int(image_info.resized_height(info)), int(image_info.resized_width(info))),
      original_hw)
  return {'keypoints': keypoints, 'keypoint_scores': scores}


class Predictor:
  """Runs Mask R-CNN inference on uint8 RGB images.

  The device part (normalization, backbone to fixed-size detections) is one jitted
  function, compiled once per padded batch shape (one per canvas); resizing,
  transposing portraits onto landscape canvases, undoing that on the outputs, rescaling
  boxes and pasting masks happen on the host, in the plain functions of
  inference/serving.py that a server calls around an exported artifact.
  """

  def __init__(self, config: ml_collections.ConfigDict, variables: Any,
               category_ids: Sequence[int] | None = None, source: str = 'the variables'):
    """Args:
      config: a full config (`model`, `data` and `eval` sections are read).
      variables: {'params': ..., 'batch_stats': ...} for `MaskRCNN(config.model)`.
      category_ids: dataset category id of each class 1..K; None keeps the class
        index itself (torchvision's COCO models use category ids as labels).
      source: what holds `variables` (a checkpoint path), named when they do not fit.
    """
    check_variables(config, variables, source)
    self._config = config
    self._variables = jax.device_put(variables)
    self._class_to_id = serving.category_ids_of_classes(config.model.num_classes,
                                                        category_ids)
    self._forward = compiler.jit(mask_rcnn.MaskRCNN(config.model).apply)

  @property
  def num_compilations(self) -> int:
    """How many padded input shapes the forward pass has been compiled for.

    At most one per canvas (with eval.pad_to_multiple > 0: per padded shape).
    """
    return self._forward._cache_size()  # pylint: disable=protected-access

  def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
    """Detections of one [H, W, 3] uint8 RGB image; see `predict_batch`."""
    return self.predict_batch([image])[0]

  def predict_batch(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Detections for each image.

    Images are run in groups sharing a canvas (`transforms.choose_canvas`), one forward
    pass per group.

    Returns per image: `boxes [n, 4]` float32 in original-image pixels, `scores [n]`,
    `classes [n]` dataset category ids, `masks [n, H, W]` bool (with the mask head);
    with the keypoint head `keypoints [n, K, 3]` (x, y, 1 in original pixels, as
    torchvision) and `keypoint_scores [n, K]`.
    """
    groups = {}  # canvas -> indices into images
    for i, image in enumerate(images):
      groups.setdefault(self._canvas(np.asarray(image)), []).append(i)
    results = [None] * len(images)
    for indices in groups.values():
      group = [images[i] for i in indices]
      batch, infos = self.preprocess(group)
      outputs = jax.device_get(self._forward(self._variables, batch, infos))
      for j, (i, image) in enumerate(zip(indices, group)):
        results[i] = serving.detections_in_original(
            outputs, j, np.asarray(image).shape[:2], infos[j], self._class_to_id,
            self._config.eval.mask_threshold, self._config.eval.mask_paste)
        if 'keypoint_heatmaps' in outputs:
          results[i].update(_keypoints(outputs, j, np.asarray(image).shape[:2], infos[j]))
    return results

  def _canvas(self, image: np.ndarray) -> transforms.Canvas:
    return serving.canvas_of(image, self._config)

  def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Resized, transposed where the canvas says so, zero-padded raw pixels and their info.

    `serving.preprocess`: resizing as the input pipeline does (data.resize_backend), the
    model normalizes. Padding: to the images' common canvas (the main one,
    data.image_size, when they differ), or with eval.pad_to_multiple > 0 to the smallest
    multiple of it holding them all.

    Returns:
      images [B, H, W, 3] raw RGB 0..255 (`transforms.image_dtype`) and image_info
      [B, 5] float32.
    """
    return serving.preprocess(images, self._config)
