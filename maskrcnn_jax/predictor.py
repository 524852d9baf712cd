"""`Predictor`: images of any size in, detections in original-image pixels out."""

from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from maskrcnn_jax import xla_options
from maskrcnn_jax.data import transforms
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.ops import masks as mask_ops


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


class Predictor:
  """Runs Mask R-CNN inference on uint8 RGB images.

  The device part (backbone to fixed-size detections) is one jitted function,
  compiled once per padded batch shape; resizing, rescaling boxes and pasting masks
  happen on the host.
  """

  def __init__(self, config: ml_collections.ConfigDict, variables: Any,
               category_ids: Sequence[int] | None = None):
    """Args:
      config: a full config (`model`, `data` and `eval` sections are read).
      variables: {'params': ..., 'batch_stats': ...} for `MaskRCNN(config.model)`.
      category_ids: dataset category id of each class 1..K; None keeps the class
        index itself (torchvision's COCO models use category ids as labels).
    """
    self._config = config
    self._variables = jax.device_put(variables)
    if category_ids is not None and len(category_ids) != config.model.num_classes:
      raise ValueError(f'category_ids has {len(category_ids)} entries but '
                       f'config.model.num_classes is {config.model.num_classes}')
    self._category_ids = (np.arange(config.model.num_classes + 1) if category_ids is None
                          else np.concatenate([[0], np.asarray(category_ids)]))
    self._forward = jax.jit(mask_rcnn.MaskRCNN(config.model).apply,
                            compiler_options=xla_options.compiler_options())

  @property
  def num_compilations(self) -> int:
    """How many padded input shapes the forward pass has been compiled for."""
    return self._forward._cache_size()  # pylint: disable=protected-access

  def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
    """Detections of one [H, W, 3] uint8 RGB image; see `predict_batch`."""
    return self.predict_batch([image])[0]

  def predict_batch(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Detections for each image.

    Returns per image: `boxes [n, 4]` float32 in original-image pixels, `scores [n]`,
    `classes [n]` dataset category ids, `masks [n, H, W]` bool.
    """
    batch, image_info = self.preprocess(images)
    outputs = jax.device_get(self._forward(self._variables, batch, image_info))
    return [self._to_original(outputs, i, np.asarray(image).shape[:2], image_info[i])
            for i, image in enumerate(images)]

  def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Resized, normalized, padded `images` [B, H, W, 3] and `image_info` [B, 4]."""
    data, ev = self._config.data, self._config.eval
    resized, infos = [], []
    for image in images:
      image = np.asarray(image)
      if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'expected an [H, W, 3] RGB image, got shape {image.shape}')
      height, width = image.shape[:2]
      new_h, new_w, scale = transforms.resize_shape(
          height, width, data.resize_mode, data.min_size, data.max_size)
      pixels = transforms.resize_image(image, new_h, new_w)
      resized.append(transforms.normalize_image(pixels, data.mean_rgb, data.std_rgb))
      infos.append([new_h, new_w, scale, 0.0])
    if ev.pad_to_multiple > 0:
      pad_h = _round_up(max(r.shape[0] for r in resized), ev.pad_to_multiple)
      pad_w = _round_up(max(r.shape[1] for r in resized), ev.pad_to_multiple)
    else:
      pad_h, pad_w = data.image_size
    batch = np.stack([transforms.pad_image(r, pad_h, pad_w) for r in resized])
    return batch, np.asarray(infos, np.float32)

  def _to_original(self, outputs, index, original_shape, info):
    height, width = original_shape
    keep = np.asarray(outputs['valid'][index], bool)
    boxes = transforms.resize_boxes(np.asarray(outputs['boxes'][index][keep], np.float32),
                                    int(info[0]), int(info[1]), height, width)
    probs = np.asarray(outputs['masks'][index][keep], np.float32)
    masks = np.stack([
        mask_ops.paste_mask(p, b, height, width, threshold=self._config.eval.mask_threshold,
                            method=self._config.eval.mask_paste)
        for p, b in zip(probs, boxes)]) if len(boxes) else np.zeros((0, height, width), bool)
    classes = self._category_ids[np.asarray(outputs['classes'][index][keep])]
    return {'boxes': boxes, 'scores': np.asarray(outputs['scores'][index][keep], np.float32),
            'classes': classes.astype(np.int64), 'masks': masks}
