"""`Predictor`: images of any size in, detections in original-image pixels out."""

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
               category_ids: Sequence[int] | None = None):
    """Args:
      config: a full config (`model`, `data` and `eval` sections are read).
      variables: {'params': ..., 'batch_stats': ...} for `MaskRCNN(config.model)`.
      category_ids: dataset category id of each class 1..K; None keeps the class
        index itself (torchvision's COCO models use category ids as labels).
    """
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
