"""A corrupt image met while training (data.corrupt_images): replaced and counted, or fatal."""

import dataclasses
import json
import logging

import numpy as np
from PIL import Image
import pytest

from maskrcnn_jax.data import coco
from maskrcnn_jax.data import examples
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import structures
from tests.data.test_batches import batches_config

BAD_ID = 4
BATCH = 4  # 10 images: 3 steps an epoch, the last topped up


def _config(**overrides):
  return batches_config(**{**dict(min_size=32, max_size=64, train_min_sizes=(24, 32),
                                   image_size=(64, 64), extra_canvases=(), max_instances=2),
                            **overrides})


@pytest.fixture(scope='module')
def split(tmp_path_factory):
  """(good, bad): a 10-image JPEG split, and the same with image BAD_ID's file truncated."""
  root = tmp_path_factory.mktemp('jpegs')
  rng = np.random.default_rng(0)
  images, annotations = [], []
  for image_id in range(1, 11):
    name = f'{image_id:02d}.jpg'
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), np.uint8)).save(root / name)
    images.append({'id': image_id, 'file_name': name, 'height': 24, 'width': 32})
    annotations.append({'id': image_id, 'image_id': image_id, 'category_id': 1,
                        'bbox': [2, 2, 12, 10], 'iscrowd': 0, 'area': 120,
                        'segmentation': [[2, 2, 14, 2, 14, 12, 2, 12]]})
  (root / 'instances.json').write_text(json.dumps({
      'images': images, 'annotations': annotations, 'categories': [{'id': 1, 'name': 'a'}]}))
  good = coco.load_coco(str(root / 'instances.json'), str(root), filter_empty=False)
  truncated = root / 'truncated.jpg'
  blob = (root / f'{BAD_ID:02d}.jpg').read_bytes()
  truncated.write_bytes(blob[:len(blob) // 2])
  bad = dataclasses.replace(good, records=[
      dataclasses.replace(r, path=str(truncated)) if r.image_id == BAD_ID else r
      for r in good.records])
  return good, bad


def _stream(dataset, count, **kwargs):
  config = _config(**{k: kwargs.pop(k) for k in ('num_workers', 'corrupt_images')
                      if k in kwargs})
  with pipeline.Batches(dataset, config, BATCH, train=True, seed=3, **kwargs) as batches:
    return [next(batches) for _ in range(count)], batches.skipped_images


def assert_same_batches(stream_a, stream_b):
  assert len(stream_a) == len(stream_b)
  for a, b in zip(stream_a, stream_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_skip_replaces_a_truncated_jpeg_by_another_image_of_its_step(split, caplog):
  good, bad = split
  want, _ = _stream(good, 6)
  with caplog.at_level(logging.WARNING):
    got, skipped = _stream(bad, 6)
  assert len(got) == len(want)
  replaced = 0
  for g, w in zip(got, want):  # two epochs: the bad image comes up twice
    assert g.keys() == w.keys() == examples.empty_batch(1, _config()).keys()
    for slot in range(BATCH):
      if w['image_id'][slot] != BAD_ID:  # every other slot as without the broken file
        for key in g:
          np.testing.assert_array_equal(g[key][slot], w[key][slot], err_msg=key)
        continue
      replaced += 1
      # Another image of the same step, a real example with instances.
      assert g['image_id'][slot] in set(w['image_id'].tolist()) - {BAD_ID}
      assert g['gt_classes'][slot].any() and g['images'][slot].any()
  assert replaced == 2
  warnings = [r.getMessage() for r in caplog.records if 'data.corrupt_images' in r.getMessage()]
  assert len(warnings) == 1, warnings  # once per image, however often it comes up
  assert f'image id {BAD_ID}: cannot decode' in warnings[0]
  assert 'truncated.jpg' in warnings[0] and '1 unreadable training images' in warnings[0]
  assert skipped == 1


@pytest.mark.slow
def test_skip_gives_the_same_batches_with_a_worker_and_on_resume(split):
  _, bad = split
  stream, skipped = _stream(bad, 6)
  in_worker, skipped_in_worker = _stream(bad, 6, num_workers=1)
  assert_same_batches(stream, in_worker)
  assert skipped == skipped_in_worker == 1
  resumed, _ = _stream(bad, 2, start_step=4)
  assert_same_batches(stream[4:], resumed)


def test_fail_stops_training_naming_the_file_and_evaluation_always_stops(split):
  _, bad = split
  with pytest.raises(structures.CocoFormatError,
                     match=rf'image id {BAD_ID}: cannot decode .*truncated.jpg'):
    _stream(bad, 6, corrupt_images='fail')
  with pytest.raises(structures.CocoFormatError,
                     match=rf'image id {BAD_ID}: cannot decode .*truncated.jpg'):
    with pipeline.Batches(bad, _config(), BATCH, train=False) as batches:
      list(batches)
  with pytest.raises(ValueError, match=r"data.corrupt_images must be one of \('skip', "
                     r"'fail'\); got 'ignore'"):
    pipeline.Batches(bad, _config(corrupt_images='ignore'), BATCH, train=True)


def test_a_step_without_any_readable_image_stops(split, tmp_path):
  good, _ = split
  missing = dataclasses.replace(good, records=[
      dataclasses.replace(r, path=str(tmp_path / 'gone.jpg')) for r in good.records])
  with pytest.raises(structures.CocoFormatError,
                     match=r'missing image .*gone.jpg \(no image of step 0 could be read'):
    _stream(missing, 1)


@pytest.mark.slow
def test_a_training_run_reports_the_skipped_image(tmp_path, caplog):
  from maskrcnn_jax.train import loop  # pylint: disable=import-outside-toplevel
  from maskrcnn_jax.data import shapes  # pylint: disable=import-outside-toplevel
  from tests.conftest import load_config  # pylint: disable=import-outside-toplevel

  config = load_config('tiny')
  d, t = config.data, config.train
  d.train_annotations, d.train_images = shapes.write_split(str(tmp_path / 'shapes'), 'train',
                                                           2, 64, seed=0)
  d.val_annotations, d.num_workers = '', 0
  t.batch_size, t.num_steps, t.log_every, t.checkpoint_every = 2, 2, 1, 2
  first = json.loads(open(d.train_annotations).read())['images'][0]
  with open(f'{d.train_images}/{first["file_name"]}', 'wb') as f:
    f.write(b'\xff\xd8\xff garbage')  # a JPEG's first bytes, then nothing readable
  with caplog.at_level(logging.INFO):
    loop.train_and_evaluate(config, str(tmp_path / 'run'))
  lines = [r.getMessage() for r in caplog.records]
  assert sum('data.corrupt_images' in line and f'image id {first["id"]}' in line
             for line in lines) == 1
  assert any(line.startswith('step 2/2: ') and '| 1 unreadable images skipped |' in line
             for line in lines), lines
  assert any(line.startswith('1 training images could not be read') for line in lines)
