"""`Predictor`: images of any size in, detections in original-image pixels out."""

from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from maskrcnn_jax import image_info
from maskrcnn_jax import xla_options
from maskrcnn_jax.data import transforms
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.ops import masks as mask_ops


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


class Predictor:
  """Runs Mask R-CNN inference on uint8 RGB images.

  The device part (normalization, backbone to fixed-size detections) is one jitted
  function, compiled once per padded batch shape (one per canvas); resizing,
  transposing portraits onto landscape canvases, undoing that on the outputs, rescaling
  boxes and pasting masks happen on the host.
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
    `classes [n]` dataset category ids, `masks [n, H, W]` bool.
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
        results[i] = self._to_original(outputs, j, np.asarray(image).shape[:2], infos[j])
    return results

  def _canvas(self, image: np.ndarray) -> transforms.Canvas:
    if image.ndim != 3 or image.shape[2] != 3:
      raise ValueError(f'expected an [H, W, 3] RGB image, got shape {image.shape}')
    return transforms.choose_canvas(image.shape[0], image.shape[1], self._config.data,
                                    train=False)

  def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Resized, transposed where the canvas says so, zero-padded raw pixels and their info.

    Resizing as the input pipeline does (data.resize_backend: OpenCV on uint8, or
    torchvision's exact float32 resize); the model normalizes. Padding: to the images'
    common canvas (the main one, data.image_size, when they have different canvases),
    or with eval.pad_to_multiple > 0 to the smallest multiple of it holding them all.

    Returns:
      images [B, H, W, 3] raw RGB 0..255 (`transforms.image_dtype`) and image_info
      [B, 5] float32.
    """
    data, ev = self._config.data, self._config.eval
    resized, infos, canvases = [], [], set()
    for image in images:
      image = np.asarray(image)
      canvas = self._canvas(image)
      canvases.add(canvas)
      height, width = image.shape[:2]
      new_h, new_w, scale = transforms.resize_shape(
          height, width, data.resize_mode, data.min_size, data.max_size)
      pixels = transforms.resize_pixels(image, new_h, new_w, data)
      if canvas.transpose:  # after resizing: exactly the transpose of the untransposed input
        pixels = transforms.transpose_image(pixels)
      resized.append(pixels)
      infos.append(image_info.make(pixels.shape[0], pixels.shape[1], scale,
                                   transposed=canvas.transpose))
    if ev.pad_to_multiple > 0:
      pad_h = _round_up(max(r.shape[0] for r in resized), ev.pad_to_multiple)
      pad_w = _round_up(max(r.shape[1] for r in resized), ev.pad_to_multiple)
    elif len(canvases) == 1:
      pad_h, pad_w = next(iter(canvases))[1:3]
    else:
      pad_h, pad_w = data.image_size
    batch = np.stack([transforms.pad_image(r, pad_h, pad_w) for r in resized])
    return batch, np.stack(infos)

  def _to_original(self, outputs, index, original_shape, info):
    height, width = original_shape
    keep = np.asarray(outputs['valid'][index], bool)
    boxes, probs, (resized_h, resized_w) = transforms.to_original_orientation(
        np.asarray(outputs['boxes'][index][keep], np.float32),
        np.asarray(outputs['masks'][index][keep], np.float32), info)
    boxes = transforms.resize_boxes(boxes, resized_h, resized_w, height, width)
    masks = np.stack([
        mask_ops.paste_mask(p, b, height, width, threshold=self._config.eval.mask_threshold,
                            method=self._config.eval.mask_paste)
        for p, b in zip(probs, boxes)]) if len(boxes) else np.zeros((0, height, width), bool)
    classes = self._category_ids[np.asarray(outputs['classes'][index][keep])]
    return {'boxes': boxes, 'scores': np.asarray(outputs['scores'][index][keep], np.float32),
            'classes': classes.astype(np.int64), 'masks': masks}
