"""Host pre- and post-processing around the compiled forward: what a server calls.

The device program (a jitted `MaskRCNN.apply`, or an exported artifact of
inference/export.py) takes resized, zero-padded uint8 images on one canvas and their
image_info rows, and returns fixed-size detections in the canvas frame. These plain
NumPy functions are the steps around it:

  images, info = preprocess(raw_images, config)            # resize, transpose, pad
  outputs = forward(images, info)                          # device
  detections = postprocess(outputs, original_shapes, info, config)   # original pixels

`Predictor` calls them around its jitted forward. A server that has only an artifact's
metadata.json builds the config they read with `config_from_metadata`.
"""

from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from maskrcnn_jax import image_info
from maskrcnn_jax.data import transforms
from maskrcnn_jax.inference import paste


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def check_image(image: np.ndarray, name: str = 'image') -> np.ndarray:
  """`image` as an [H, W, 3] array, else a ValueError naming it."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) == 0:
    raise ValueError(f'{name}: expected an [H, W, 3] RGB image, got shape {image.shape}')
  return image


def canvas_of(image: np.ndarray, config: ml_collections.ConfigDict) -> transforms.Canvas:
  """The evaluation canvas of one [H, W, 3] image (`transforms.choose_canvas`)."""
  image = check_image(image)
  return transforms.choose_canvas(image.shape[0], image.shape[1], config.data, train=False)


def resize_onto_canvas(image: np.ndarray, config: ml_collections.ConfigDict
                       ) -> tuple[np.ndarray, np.ndarray]:
  """One image resized as at evaluation, transposed when its canvas says so, unpadded.

  Args:
    image: [H, W, 3] uint8 RGB.
    config: `data` is read (resize_mode, min_size, max_size, resize_backend, canvases,
      transpose_portrait).

  Returns:
    pixels [h, w, 3] in `transforms.image_dtype` (canvas frame) and its image_info [5].
  """
  data = config.data
  image = check_image(image)
  canvas = canvas_of(image, config)
  height, width = image.shape[:2]
  new_h, new_w, scale = transforms.resize_shape(height, width, data.resize_mode,
                                                data.min_size, data.max_size)
  pixels = transforms.resize_pixels(image, new_h, new_w, data)
  if canvas.transpose:  # after resizing: exactly the transpose of the untransposed input
    pixels = transforms.transpose_image(pixels)
  return pixels, image_info.make(pixels.shape[0], pixels.shape[1], scale,
                                 transposed=canvas.transpose)


def pad_batch(pixels: Sequence[np.ndarray], infos: Sequence[np.ndarray], height: int,
              width: int, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Zero-pads resized images to [height, width] and the batch to `batch_size` slots.

  Empty slots (an exported artifact has a fixed batch) are zero images with a zero
  image_info row: the model gives them no detections.

  Returns:
    images [B, height, width, 3] and image_info [B, 5] float32.
  """
  batch_size = len(pixels) if batch_size is None else batch_size
  if len(pixels) > batch_size:
    raise ValueError(f'{len(pixels)} images do not fit a batch of {batch_size}')
  dtype = pixels[0].dtype if len(pixels) else np.uint8
  images = np.zeros((batch_size, height, width, 3), dtype)
  rows = np.zeros((batch_size, image_info.SIZE), np.float32)
  for i, (p, info) in enumerate(zip(pixels, infos)):
    images[i] = transforms.pad_image(p, height, width)
    rows[i] = info
  return images, rows


def preprocess(images: Sequence[np.ndarray], config: ml_collections.ConfigDict,
               canvas: tuple[int, int] | None = None, batch_size: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """Raw images -> (images [B, H, W, 3], image_info [B, 5]) for the device program.

  Args:
    images: [H_i, W_i, 3] uint8 RGB, any sizes.
    config: `data` and `eval` are read.
    canvas: (H, W) to pad onto, e.g. an artifact's `metadata['canvas']`; every image must
      fit it. None: the images' common canvas (the main one, data.image_size, when they
      differ), or with eval.pad_to_multiple > 0 the smallest multiple holding them all.
    batch_size: pad the batch with empty slots to this size (an artifact's batch).
  """
  resized = [resize_onto_canvas(image, config) for image in images]
  pixels = [p for p, _ in resized]
  infos = [info for _, info in resized]
  if canvas is not None:
    pad_h, pad_w = (int(v) for v in canvas)
  elif config.eval.pad_to_multiple > 0:
    pad_h = _round_up(max(p.shape[0] for p in pixels), config.eval.pad_to_multiple)
    pad_w = _round_up(max(p.shape[1] for p in pixels), config.eval.pad_to_multiple)
  else:
    canvases = {canvas_of(image, config)[1:3] for image in images}
    pad_h, pad_w = (next(iter(canvases)) if len(canvases) == 1
                    else tuple(config.data.image_size))
  return pad_batch(pixels, infos, pad_h, pad_w, batch_size)


def category_ids_of_classes(num_classes: int, category_ids: Sequence[int] | None
                            ) -> np.ndarray:
  """[K + 1] int64: the dataset id of class 0..K (0 for background); None: the index."""
  if category_ids is None:
    return np.arange(num_classes + 1, dtype=np.int64)
  if len(category_ids) != num_classes:
    raise ValueError(f'category_ids has {len(category_ids)} entries but the model has '
                     f'{num_classes} classes (model.num_classes)')
  return np.concatenate([[0], np.asarray(category_ids, np.int64)])


def detections_in_original(outputs: Mapping[str, np.ndarray], index: int,
                           original_shape: tuple[int, int], info: np.ndarray,
                           class_to_id: np.ndarray, mask_threshold: float = 0.5,
                           mask_paste: str = 'bilinear') -> dict[str, np.ndarray]:
  """One image's valid detections, in its original pixels.

  Args:
    outputs: the device program's outputs as NumPy: boxes [B, D, 4] (canvas frame),
      scores [B, D], classes [B, D], masks [B, D, M, M] probabilities, valid [B, D].
    index: the image's slot in the batch.
    original_shape: (H, W) of the image before resizing.
    info: [5] its image_info row.
    class_to_id: [K + 1] dataset id of each class (`category_ids_of_classes`).

  Returns:
    boxes [n, 4] float32 x1y1x2y2, scores [n] float32, classes [n] int64 dataset ids,
    masks [n, H, W] bool (pasted at `mask_threshold` by `mask_paste`).
  """
  height, width = original_shape
  keep = np.asarray(outputs['valid'][index], bool)
  has_masks = 'masks' in outputs  # a model without a mask head (Keypoint R-CNN) has none
  boxes, probs, (resized_h, resized_w) = transforms.to_original_orientation(
      np.asarray(outputs['boxes'][index][keep], np.float32),
      np.asarray(outputs['masks'][index][keep], np.float32) if has_masks
      else np.zeros((int(keep.sum()), 1, 1), np.float32), info)
  boxes = transforms.resize_boxes(boxes, resized_h, resized_w, height, width)
  classes = class_to_id[np.asarray(outputs['classes'][index][keep])]
  result = {'boxes': boxes, 'scores': np.asarray(outputs['scores'][index][keep], np.float32),
            'classes': classes.astype(np.int64)}
  if has_masks:
    result['masks'] = np.stack([
        paste.paste_mask(p, b, height, width, threshold=mask_threshold, method=mask_paste)
        for p, b in zip(probs, boxes)]) if len(boxes) else np.zeros((0, height, width), bool)
  return result


def postprocess(outputs: Mapping[str, np.ndarray], original_shapes: Sequence[tuple[int, int]],
                infos: np.ndarray, config: ml_collections.ConfigDict,
                category_ids: Sequence[int] | None = None) -> list[dict[str, np.ndarray]]:
  """`detections_in_original` for the first len(original_shapes) slots of a batch."""
  class_to_id = category_ids_of_classes(config.model.num_classes, category_ids)
  return [detections_in_original(outputs, i, tuple(shape)[:2], infos[i], class_to_id,
                                 config.eval.mask_threshold, config.eval.mask_paste)
          for i, shape in enumerate(original_shapes)]


def config_from_metadata(meta: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The config sections `preprocess` / `postprocess` read, from an artifact's metadata.

  The canvas list is the artifact's one canvas: an image whose resize does not fit it is
  refused by `preprocess` with the sizes named.
  """
  pre = meta['preprocessing']
  height, width = meta['canvas']
  config = ml_collections.ConfigDict({
      'data': {
          'resize_mode': pre['resize_mode'], 'min_size': pre['min_size'],
          'max_size': pre['max_size'], 'resize_backend': pre.get('resize_backend', 'opencv'),
          'image_size': (height, width), 'extra_canvases': (),
          'transpose_portrait': pre['transpose_portrait'], 'large_scale_jitter': False,
          'train_min_sizes': (),
      },
      'eval': {'pad_to_multiple': 0, 'mask_threshold': meta['mask_threshold'],
               'mask_paste': meta['mask_paste']},
      'model': {'num_classes': meta['num_classes']},
  })
  config.lock()
  return config
