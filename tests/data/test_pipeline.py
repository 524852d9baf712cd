"""Tests of data/pipeline.py: example contents, canvases, splits (Batches: test_batches.py)."""

import subprocess
import sys

import cv2
import numpy as np
import pytest

from maskrcnn_jax.config import default_config
from maskrcnn_jax.data import augment
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import examples
from maskrcnn_jax.data import image_files
from maskrcnn_jax.data import mask_crops
from maskrcnn_jax.data import mask_decoding
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import shapes
from maskrcnn_jax.data import transforms
from maskrcnn_jax.inference import paste
from tests.conftest import REPO_ROOT


def _data_config(**overrides):
  c = default_config().data
  c.unlock()
  settings = dict(resize_mode='shorter_side', min_size=80, max_size=96, image_size=(128, 128),
                  extra_canvases=(), transpose_portrait=False, train_min_sizes=(),
                  max_instances=4, mask_size=16, num_workers=2, prefetch=2)
  c.update({**settings, **overrides})
  return c


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  annotations, images = shapes.write_split(str(tmp_path_factory.mktemp('shapes')), 'train',
                                           num_images=10, image_size=48, seed=1, max_shapes=6)
  return coco.load_coco(annotations, images, filter_empty=False)


def test_example_contents_and_flip(dataset):
  cfg = _data_config()
  record = max(dataset.records, key=lambda r: r.num_instances)
  assert record.num_instances > cfg.max_instances  # exercises truncation
  plain, flipped = examples.empty_batch(1, cfg), examples.empty_batch(1, cfg)
  examples.fill_example(plain, 0, record, cfg, flip=False)
  examples.fill_example(flipped, 0, record, cfg, flip=True)
  n, scale = cfg.max_instances, 80 / 48

  np.testing.assert_allclose(plain['image_info'][0], [80, 80, scale, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(flipped['image_info'][0], [80, 80, scale, 1, 0], rtol=1e-6)
  image = image_files.read_image(record)
  # Raw uint8 pixels: OpenCV's bilinear resize, within a level of torch's exact one.
  assert plain['images'].dtype == np.uint8
  expected = transforms.resize_uint8(image, 80, 80)
  np.testing.assert_array_equal(plain['images'][0, :80, :80], expected)
  assert np.abs(expected - transforms.resize_image(image, 80, 80)).max() <= 1
  assert not plain['images'][0, 80:].any() and not plain['images'][0, :, 80:].any()
  np.testing.assert_array_equal(flipped['images'][0, :80, :80], expected[:, ::-1])

  np.testing.assert_allclose(plain['gt_boxes'][0], record.boxes[:n] * scale, rtol=1e-6)
  x1, y1, x2, y2 = (record.boxes[:n] * scale).T
  np.testing.assert_allclose(flipped['gt_boxes'][0], np.stack([80 - x2, y1, 80 - x1, y2], -1),
                             rtol=1e-6)
  for batch in (plain, flipped):
    np.testing.assert_array_equal(batch['gt_classes'][0], record.classes[:n])
    np.testing.assert_array_equal(batch['gt_is_crowd'][0], record.is_crowd[:n])
    assert batch['image_id'][0] == record.image_id

  masks = mask_decoding.decode_masks(record)
  for i in range(n):
    box = record.boxes[i]
    np.testing.assert_array_equal(plain['gt_masks'][0, i],
                                  mask_crops.crop_and_resize_mask(masks[i], box, 16))
    # The flipped crop is the crop of the mirrored mask over the mirrored box.
    mirrored_box = [48 - box[2], box[1], 48 - box[0], box[3]]
    np.testing.assert_array_equal(
        flipped['gt_masks'][0, i],
        mask_crops.crop_and_resize_mask(masks[i][:, ::-1], mirrored_box, 16))
    assert plain['gt_masks'][0, i].any()


def test_prepare_example_is_fill_example(dataset):
  cfg = _data_config()
  record = dataset.records[3]
  canvas = transforms.choose_canvas(record.height, record.width, cfg, train=False)
  example = examples.prepare_example(record, cfg, canvas, None)
  batch = examples.empty_batch(1, cfg)
  examples.fill_example(batch, 0, record, cfg)
  assert set(example) == set(batch)
  for key, value in example.items():
    assert value.shape == batch[key].shape[1:] and value.dtype == batch[key].dtype, key
    np.testing.assert_array_equal(value, batch[key][0])


def test_training_draws_the_shorter_side(dataset):
  cfg = _data_config(train_min_sizes=(64, 72, 80), max_size=128)
  record = dataset.records[0]  # 48 x 48
  canvas = transforms.choose_canvas(record.height, record.width, cfg, train=True)
  sides = set()
  for seed in range(30):
    example = examples.prepare_example(record, cfg, canvas, np.random.default_rng(seed))
    side, scale = int(example['image_info'][0]), example['image_info'][2]
    sides.add(side)
    assert tuple(example['image_info'][:2]) == (side, side) and scale == pytest.approx(side / 48)
    image = transforms.resize_uint8(image_files.read_image(record), side, side)
    if example['image_info'][3]:
      image = image[:, ::-1]
    np.testing.assert_array_equal(example['images'][:side, :side], image)
    assert not example['images'][side:].any() and not example['images'][:, side:].any()
    n = min(record.num_instances, cfg.max_instances)
    boxes = record.boxes[:n] * np.float32(side / 48)
    if example['image_info'][3]:
      boxes = np.stack([side - boxes[:, 2], boxes[:, 1], side - boxes[:, 0], boxes[:, 3]], -1)
    np.testing.assert_allclose(example['gt_boxes'][:n], boxes, rtol=1e-5)
  assert sides == {64, 72, 80}


def _portrait(coco_tiny):
  dataset = coco.load_coco(coco_tiny / 'annotations' / 'instances_val2017.json',
                           coco_tiny / 'val2017', filter_empty=False)
  return dataset, max((r for r in dataset.records if r.height > r.width),
                      key=lambda r: r.num_instances)


@pytest.mark.parametrize('flip', [False, True])
def test_transposed_example_is_the_transpose_of_the_plain_one(coco_tiny, flip):
  _, record = _portrait(coco_tiny)
  settings = dict(min_size=200, max_size=320, max_instances=30, mask_size=28)
  plain_config = _data_config(image_size=(320, 320), **settings)
  config = _data_config(image_size=(256, 320), transpose_portrait=True, **settings)
  plain, transposed = examples.empty_batch(1, plain_config), examples.empty_batch(1, config)
  examples.fill_example(plain, 0, record, plain_config, flip)
  examples.fill_example(transposed, 0, record, config, flip)
  h, w = (int(v) for v in plain['image_info'][0, :2])
  assert h > w and tuple(transposed['image_info'][0]) == (w, h, plain['image_info'][0, 2],
                                                          flip, 1)
  np.testing.assert_array_equal(transposed['images'][0, :w, :h],
                                plain['images'][0, :h, :w].transpose(1, 0, 2))
  assert not transposed['images'][0, w:].any() and not transposed['images'][0, :, h:].any()
  np.testing.assert_array_equal(transposed['gt_boxes'][0], plain['gt_boxes'][0][:, [1, 0, 3, 2]])
  np.testing.assert_array_equal(transposed['gt_masks'][0], plain['gt_masks'][0].transpose(0, 2, 1))
  for key in ('gt_classes', 'gt_is_crowd', 'image_id'):
    np.testing.assert_array_equal(transposed[key], plain[key])

  # The ground truth as detections, through the transpose and back, pastes exactly as
  # the plain example's, and lands on the original boxes.
  n = min(record.num_instances, 30)
  for i in range(n):
    results = []
    for example in (plain, transposed):
      boxes, probs, (rh, rw) = transforms.to_original_orientation(
          example['gt_boxes'][0, i:i + 1], example['gt_masks'][0, i:i + 1].astype(np.float32),
          example['image_info'][0])
      boxes = transforms.resize_boxes(boxes, rh, rw, record.height, record.width)
      results.append((boxes, paste.paste_mask(probs[0], boxes[0], record.height,
                                                  record.width)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    expected = record.boxes[i]
    if flip:
      expected = [record.width - expected[2], expected[1], record.width - expected[0],
                  expected[3]]
    np.testing.assert_allclose(results[1][0][0], expected, atol=0.05)


def test_large_scale_jitter_crops_boxes_masks_and_crowd_together(coco_tiny):
  dataset, _ = _portrait(coco_tiny)
  cfg = _data_config(large_scale_jitter=True, lsj_scale_range=(1.0, 2.0), image_size=(256, 256),
                     resize_mode='square', min_size=256, max_size=256, max_instances=100,
                     mask_size=28)
  canvas = transforms.choose_canvas(480, 640, cfg, train=True)
  assert canvas == transforms.Canvas(0, 256, 256, False)
  record = max(dataset.records, key=lambda r: r.num_instances)  # many instances, crowd too
  assert record.is_crowd.any()
  dropped = checked = 0
  for seed in range(6):
    rng = np.random.default_rng(seed)
    geometry = augment.draw_geometry(record.height, record.width, cfg, canvas,
                                     np.random.default_rng(seed))
    example = examples.prepare_example(record, cfg, canvas, rng)
    g = geometry
    ch, cw = min(g.new_height, 256), min(g.new_width, 256)
    assert g.cropped and (g.crop_height, g.crop_width) == (ch, cw)
    # Pixels: the window of the resized (flipped) image, zero-padded.
    resized = transforms.resize_uint8(image_files.read_image(record), g.new_height, g.new_width)
    if g.flip:
      resized = resized[:, ::-1]
    np.testing.assert_array_equal(
        example['images'][:ch, :cw], resized[g.crop_y:g.crop_y + ch, g.crop_x:g.crop_x + cw])
    assert not example['images'][ch:].any() and not example['images'][:, cw:].any()
    np.testing.assert_allclose(example['image_info'], [ch, cw, g.scale, g.flip, 0], rtol=1e-6)
    # Boxes, from the definition: scale, flip, shift, clip; drop the emptied ones.
    sx, sy = g.new_width / record.width, g.new_height / record.height
    x1, y1, x2, y2 = record.boxes.astype(np.float64).T
    if g.flip:
      x1, x2 = record.width - x2, record.width - x1
    boxes = np.stack([x1 * sx - g.crop_x, y1 * sy - g.crop_y, x2 * sx - g.crop_x,
                      y2 * sy - g.crop_y], -1).clip(0, [cw, ch, cw, ch])
    kept = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    dropped += record.num_instances - len(kept)
    n = len(kept)
    assert (example['gt_classes'] > 0).sum() == n
    np.testing.assert_allclose(example['gt_boxes'][:n], boxes[kept], atol=1e-3)
    np.testing.assert_array_equal(example['gt_classes'][:n], record.classes[kept])
    np.testing.assert_array_equal(example['gt_is_crowd'][:n], record.is_crowd[kept])
    assert not example['gt_boxes'][n:].any() and not example['gt_masks'][n:].any()
    # Masks: cropped from the original mask over the clipped box mapped back to original
    # pixels (then flipped); and close to the crop of the resized, flipped, windowed mask.
    masks = mask_decoding.decode_masks(record)
    for slot, i in enumerate(kept):
      bx1, by1, bx2, by2 = boxes[i] + [g.crop_x, g.crop_y, g.crop_x, g.crop_y]
      if g.flip:
        bx1, bx2 = g.new_width - bx2, g.new_width - bx1
      source = [bx1 / sx, by1 / sy, bx2 / sx, by2 / sy]
      expected = mask_crops.crop_and_resize_mask(masks[i], source, 28)
      np.testing.assert_array_equal(example['gt_masks'][slot],
                                    expected[:, ::-1] if g.flip else expected)
      window = cv2.resize(masks[i], (g.new_width, g.new_height),
                          interpolation=cv2.INTER_NEAREST_EXACT)
      if g.flip:
        window = window[:, ::-1]
      window = window[g.crop_y:g.crop_y + ch, g.crop_x:g.crop_x + cw]
      coarse = mask_crops.crop_and_resize_mask(window, example['gt_boxes'][slot], 28)
      if min(boxes[i, 2:] - boxes[i, :2]) >= 24:  # big enough for the samplings to agree
        checked += 1
        assert np.mean(coarse != example['gt_masks'][slot]) < 0.1, (seed, i)
  assert dropped > 0 and checked > 0  # some instances fell outside a crop
def test_padding_instances_are_zero(dataset):
  cfg = _data_config(max_instances=12)
  record = min((r for r in dataset.records if r.num_instances), key=lambda r: r.num_instances)
  batch = examples.empty_batch(1, cfg)
  examples.fill_example(batch, 0, record, cfg, flip=False)
  n = record.num_instances
  for key in ('gt_boxes', 'gt_classes', 'gt_masks', 'gt_is_crowd'):
    assert not batch[key][0, n:].any(), key
  assert (batch['gt_classes'][0, :n] > 0).all()


def test_real_coco_slice(coco_tiny):
  cfg = _data_config(min_size=160, max_size=256, image_size=(256, 256), max_instances=20,
                     mask_size=28)
  cfg.val_annotations = str(coco_tiny / 'annotations' / 'instances_val2017.json')
  cfg.val_images = str(coco_tiny / 'val2017')
  dataset = pipeline.load_split(cfg, 'val')
  with pipeline.Batches(dataset, cfg, 8, train=False) as batches:
    stream = list(batches)
  assert len(stream) == 7
  by_id = {r.image_id: r for r in dataset.records}
  crowd = expected_crowd = 0
  for batch in stream:
    for i, image_id in enumerate(batch['image_id']):
      if image_id == examples.PADDING_IMAGE_ID:
        continue
      record = by_id[image_id]
      n = min(record.num_instances, 20)
      height, width = batch['image_info'][i, :2]
      assert (height, width) == transforms.resize_shape(
          record.height, record.width, 'shorter_side', 160, 256)[:2]
      assert (batch['gt_classes'][i] > 0).sum() == n
      boxes = batch['gt_boxes'][i, :n]
      assert (boxes[:, 2] <= width + 1e-3).all() and (boxes[:, 3] <= height + 1e-3).all()
      assert batch['gt_masks'][i, :n].any(axis=(1, 2)).all()
      crowd += batch['gt_is_crowd'][i].sum()
      expected_crowd += record.is_crowd[:n].sum()
  assert crowd == expected_crowd > 0


def test_load_split_filters_empty_images_for_training_only(tmp_path):
  splits = shapes.write_shapes(str(tmp_path), num_train=8, num_val=8, image_size=32)
  cfg = _data_config(dataset='shapes')
  cfg.train_annotations, cfg.train_images = splits['train']
  cfg.val_annotations, cfg.val_images = splits['val']
  assert len(pipeline.load_split(cfg, 'train')) == 7  # image 8 is empty
  assert len(pipeline.load_split(cfg, 'val')) == 8
  cfg.filter_empty_train = False
  assert len(pipeline.load_split(cfg, 'train')) == 8


def test_data_never_imports_jax_or_tensorflow():
  code = ('import sys; from maskrcnn_jax.data import pipeline, shapes, tfds_coco; '
          "print(sorted(m for m in ('jax', 'tensorflow') if m in sys.modules))")
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          check=True, cwd=REPO_ROOT)
  assert result.stdout.strip() == '[]'
