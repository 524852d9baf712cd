"""One example of the batch (host side, NumPy): an image and its instances on their canvas.

`prepare_example` reads and decodes the image; resizes it with `data.resize_backend`
(training: the scale augmentation or large-scale jitter of data/augment.py; else the
test resize `data.resize_mode`); maybe flips it, crops it (LSJ) and transposes it (a
portrait on a landscape canvas, `transforms.choose_canvas`); pads it with zeros onto its
canvas as raw RGB, uint8 (float32 with data.resize_backend = 'torch'; the model
normalizes on the device). It keeps the first `data.max_instances` instances (boxes in
the canvas frame; each gt mask cropped from the original-image mask over its original
box, or over the part of it a crop keeps, to `data.mask_size`, then flipped and
transposed with the image; zeros for a box-only instance, which only a model without a
mask head trains on; instances a crop leaves empty are dropped) and pads the rest.
Keys, shapes and dtypes are the batch table of docs/design.md (B = per-host batch,
H x W = the batch's canvas, N = max_instances, S = mask_size):
  images [B, H, W, 3] uint8 (or float32), image_info [B, 5] float32
  (maskrcnn_jax/image_info.py: resized h, resized w, scale, flipped, transposed),
  gt_boxes [B, N, 4] float32, gt_classes [B, N] int32, gt_masks [B, N, S, S] uint8,
  gt_is_crowd [B, N] bool, image_id [B] int64; with data.num_keypoints = K > 0 also
  gt_keypoints [B, N, K, 3] float32 (x, y continuous canvas pixels, visibility; zeros
  where unlabelled or padded).
"""

import ml_collections
import numpy as np

from maskrcnn_jax import image_info
from maskrcnn_jax.data import augment
from maskrcnn_jax.data import image_files
from maskrcnn_jax.data import keypoint_flip
from maskrcnn_jax.data import mask_crops
from maskrcnn_jax.data import mask_decoding
from maskrcnn_jax.data import structures
from maskrcnn_jax.data import transforms

PADDING_IMAGE_ID = -1


def empty_batch(batch_size: int, data_config: ml_collections.ConfigDict,
                canvas_hw: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
  """A batch of padding examples (zeros, image_id -1), with the batch table's shapes.

  Args:
    batch_size: B.
    data_config: `config.data`.
    canvas_hw: (H, W) of the images; None: data.image_size (the main canvas).
  """
  height, width = data_config.image_size if canvas_hw is None else canvas_hw
  n, s = data_config.max_instances, data_config.mask_size
  return {
      'images': np.zeros((batch_size, height, width, 3), transforms.image_dtype(data_config)),
      'image_info': np.zeros((batch_size, image_info.SIZE), np.float32),
      'gt_boxes': np.zeros((batch_size, n, 4), np.float32),
      'gt_classes': np.zeros((batch_size, n), np.int32),
      'gt_masks': np.zeros((batch_size, n, s, s), np.uint8),
      'gt_is_crowd': np.zeros((batch_size, n), bool),
      'image_id': np.full((batch_size,), PADDING_IMAGE_ID, np.int64),
      **({'gt_keypoints': np.zeros((batch_size, n, data_config.num_keypoints, 3), np.float32)}
         if data_config.num_keypoints else {}),
  }


def _slot_views(batch: dict[str, np.ndarray], slot: int) -> dict[str, np.ndarray]:
  """Writable views of one slot of a batch (image_id a 0-d array, not a copied scalar)."""
  return {key: value[slot:slot + 1].reshape(value.shape[1:]) for key, value in batch.items()}


def _write_example(out: dict[str, np.ndarray], record: structures.ImageRecord,
                   data_config: ml_collections.ConfigDict, canvas: transforms.Canvas,
                   geometry: augment.Geometry) -> None:
  """Writes one record, mapped by `geometry` onto `canvas`, into zeroed per-example arrays.

  `out` holds the batch table's keys without the batch dim (views into a batch or not).
  """
  cfg, g = data_config, geometry
  # The window must fit the canvas in the image's own orientation.
  fit_h, fit_w = (canvas.width, canvas.height) if canvas.transpose else (canvas.height,
                                                                         canvas.width)
  if g.crop_height > fit_h or g.crop_width > fit_w:
    raise ValueError(
        f'{record.path} (image id {record.image_id}) resizes to {g.crop_height} x '
        f'{g.crop_width}{" (transposed)" if canvas.transpose else ""}, larger than its '
        f'canvas {canvas.height} x {canvas.width} (data.image_size / data.extra_canvases)')
  pixels = image_files.read_image(record)

  pixels = transforms.resize_pixels(pixels, g.new_height, g.new_width, cfg)
  if g.flip:
    pixels = transforms.flip_image(pixels)
  pixels = pixels[g.crop_y:g.crop_y + g.crop_height, g.crop_x:g.crop_x + g.crop_width]
  if canvas.transpose:
    pixels = transforms.transpose_image(pixels)
  out['images'][:pixels.shape[0], :pixels.shape[1]] = pixels
  out['image_info'][:] = image_info.make(pixels.shape[0], pixels.shape[1], g.scale, g.flip,
                                         canvas.transpose)
  out['image_id'][...] = record.image_id

  boxes = transforms.resize_boxes(record.boxes, record.height, record.width, g.new_height,
                                  g.new_width)
  if g.flip:
    boxes = transforms.flip_boxes(boxes, g.new_width)
  clipped = np.zeros(len(boxes), bool)
  kept = np.arange(record.num_instances)
  if g.cropped:
    boxes, keep, clipped = augment.crop_boxes(boxes, g)
    kept = np.flatnonzero(keep)  # crowd flags and classes move with their instances
  kept = kept[:cfg.max_instances]
  n = len(kept)
  # A clipped box crops the original mask over the part of it that stays in the window.
  source_boxes = np.array([
      augment.window_box_to_original(boxes[i], record.height, record.width, g)
      if clipped[i] else record.boxes[i] for i in kept], np.float64).reshape(n, 4)
  # Box-only instances (segmentation None) keep zero masks: no target (coco.check_masks).
  with_mask = np.array([record.segmentations[i] is not None for i in kept], bool)
  crops = np.zeros((n, cfg.mask_size, cfg.mask_size), np.uint8)
  crops[with_mask] = mask_crops.crop_and_resize_rles(
      [mask_decoding.instance_rle(record, i) for i in kept[with_mask]],
      source_boxes[with_mask], cfg.mask_size)
  if g.flip:
    crops = crops[:, :, ::-1]
  out['gt_masks'][:n] = crops.transpose(0, 2, 1) if canvas.transpose else crops
  boxes = boxes[kept]
  out['gt_boxes'][:n] = transforms.transpose_boxes(boxes) if canvas.transpose else boxes
  out['gt_classes'][:n] = record.classes[kept]
  out['gt_is_crowd'][:n] = record.is_crowd[kept]
  if cfg.num_keypoints:
    out['gt_keypoints'][:n] = _example_keypoints(record, kept, cfg.num_keypoints, g, canvas)


def _example_keypoints(record: structures.ImageRecord, kept: np.ndarray, num_keypoints: int,
                       geometry: augment.Geometry, canvas: transforms.Canvas) -> np.ndarray:
  """[n, K, 3] keypoints of the kept instances, mapped by `geometry` onto `canvas`.

  COCO's integer pixel indices become continuous coordinates (+ 0.5, Detectron2's
  convention), scale with the image, mirror with their left/right swap, shift with the
  crop (leaving the window makes them unlabelled) and transpose with the canvas.
  Unlabelled keypoints (v = 0) are zeros.
  """
  g = geometry
  if record.keypoints is None or record.keypoints.shape[1] != num_keypoints:
    found = 0 if record.keypoints is None else record.keypoints.shape[1]
    raise ValueError(f'{record.source}: image id {record.image_id}: {found} keypoints per '
                     f'instance, data.num_keypoints is {num_keypoints}')
  keypoints = record.keypoints[kept].copy()
  labelled = keypoints[..., 2] > 0
  keypoints[..., 0] = (keypoints[..., 0] + 0.5) * (g.new_width / record.width)
  keypoints[..., 1] = (keypoints[..., 1] + 0.5) * (g.new_height / record.height)
  keypoints[..., :2] *= labelled[..., None]
  if g.flip:
    keypoints = keypoint_flip.flip_keypoints(
        keypoints, g.new_width, keypoint_flip.flip_indices(record.keypoint_names))
  if g.cropped:
    keypoints[..., :2] -= np.array([g.crop_x, g.crop_y], np.float32)
    inside = ((keypoints[..., 0] >= 0) & (keypoints[..., 1] >= 0)
              & (keypoints[..., 0] <= g.crop_width) & (keypoints[..., 1] <= g.crop_height))
    keypoints *= (inside & (keypoints[..., 2] > 0))[..., None]
  if canvas.transpose:
    keypoints = keypoints[..., [1, 0, 2]]
  return keypoints


def prepare_example(record: structures.ImageRecord, data_config: ml_collections.ConfigDict,
                    canvas: transforms.Canvas, rng: np.random.Generator | None
                    ) -> dict[str, np.ndarray]:
  """One example (the module docstring) on `canvas`: the batch table's keys, no batch dim.

  Args:
    record: the image and its instances.
    data_config: `config.data`.
    canvas: `transforms.choose_canvas(record.height, record.width, data_config, train)`.
    rng: None for evaluation (test resize, no flip); else flip (data.random_flip) and the
      scale augmentation or large-scale jitter are drawn from it (data/augment.py).

  Returns:
    images [H, W, 3] uint8 or float32 (H, W = the canvas), image_info [5] float32,
    gt_boxes [N, 4] float32, gt_classes [N] int32, gt_masks [N, S, S] uint8,
    gt_is_crowd [N] bool, image_id [] int64.
  """
  out = _slot_views(empty_batch(1, data_config, (canvas.height, canvas.width)), 0)
  geometry = augment.draw_geometry(record.height, record.width, data_config, canvas, rng)
  _write_example(out, record, data_config, canvas, geometry)
  return out


def fill_example(batch: dict[str, np.ndarray], slot: int, record: structures.ImageRecord,
                 data_config: ml_collections.ConfigDict, flip: bool = False) -> None:
  """Prepares one record at the test resize, maybe flipped, into slot `slot` of a batch.

  The batch's canvas is its images' shape, one of the config's canvases (`empty_batch`'s
  default, the main one, holds every image); the record is transposed onto it as
  `choose_canvas` says. No scale augmentation: training draws it in `prepare_example`.
  """
  size = tuple(batch['images'].shape[1:3])
  sizes = transforms.canvas_sizes(data_config)
  if size not in sizes:
    raise ValueError(f'batch images of {size[0]} x {size[1]} are on none of the canvases '
                     f'{sizes} (data.image_size / data.extra_canvases)')
  transpose = transforms.choose_canvas(record.height, record.width, data_config,
                                       train=False).transpose
  canvas = transforms.Canvas(sizes.index(size), *size, transpose)
  geometry = augment.eval_geometry(record.height, record.width, data_config, flip)
  _write_example(_slot_views(batch, slot), record, data_config, canvas, geometry)
