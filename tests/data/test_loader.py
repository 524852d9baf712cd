"""Tests of data/loader.py and pipeline.Batches: step plan, worker processes, resumption,
sharding, canvas grouping, errors."""

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest

from maskrcnn_jax.config import default_config
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import examples
from maskrcnn_jax.data import loader
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import structures
from maskrcnn_jax.data import transforms
from tests.conftest import REPO_ROOT

# Canvas 0 (8 x 16) holds both others; canvas 2 (4 x 12) is smaller than canvas 1 (8 x 8)
# but does not fit in it, so its leftovers skip canvas 1 and go straight to canvas 0.
SIZES = [(8, 16), (8, 8), (4, 12)]


def test_train_plan_groups_canvases_and_moves_leftovers():
  record_canvas = np.array([1] * 5 + [2] * 3 + [0] * 2 + [2] * 3)  # 13 records
  plan = loader.StepPlan(record_canvas, SIZES, 4, train=True, seed=3)
  # Canvas 2 (area 48): 6 -> 1 batch, 2 left over to canvas 0. Canvas 1: 5 -> 1 batch,
  # 1 left over to canvas 0. Canvas 0: 2 + 2 + 1 = 5 -> 2 batches, the last topped up.
  assert plan.steps_per_epoch == 4 and plan.num_steps is None
  holders = {0: {0}, 1: {0, 1}, 2: {0, 2}}  # the canvases each record's canvas fits in
  for epoch in range(3):
    steps = [plan.step(epoch * 4 + i) for i in range(4)]
    assert sorted(c for c, _ in steps) == [0, 0, 1, 2]
    seen = np.concatenate([indices for _, indices in steps])
    assert set(seen.tolist()) == set(range(13))  # every record at least once an epoch
    assert len(seen) == 16 and len(set(seen.tolist())) == 13
    for canvas, indices in steps:
      assert all(canvas in holders[record_canvas[i]] for i in indices)
      if canvas:  # a smaller canvas's batch has no repeats and only fitting records
        assert len(set(indices.tolist())) == 4
  # Canvas 2's leftovers never go to canvas 1 (they do not fit); the order varies by epoch.
  assert not any(record_canvas[i] == 2 for e in range(3) for c, ix in
                 [plan.step(e * 4 + k) for k in range(4)] if c == 1 for i in ix)
  firsts = [tuple(plan.step(e * 4)[1]) for e in range(4)]
  assert len(set(firsts)) > 1


def test_train_plan_is_o1_resumable_and_seeded():
  record_canvas = np.random.default_rng(0).integers(0, 3, 50)
  plan = loader.StepPlan(record_canvas, SIZES, 8, train=True, seed=1)
  stream = [plan.step(s) for s in range(40)]
  for s in (0, 7, 23, 39):  # a fresh plan asked for step s alone gives the same step
    canvas, indices = loader.StepPlan(record_canvas, SIZES, 8, train=True, seed=1).step(s)
    assert canvas == stream[s][0]
    np.testing.assert_array_equal(indices, stream[s][1])
  other = [loader.StepPlan(record_canvas, SIZES, 8, train=True, seed=2).step(s)[1]
           for s in range(5)]
  assert not all(np.array_equal(a, b[1]) for a, b in zip(other, stream))


def test_single_canvas_plan_is_a_shuffled_stream_of_full_batches():
  plan = loader.StepPlan(np.zeros(10, int), [(8, 8)], 4, train=True, seed=0)
  assert plan.steps_per_epoch == 3
  epoch = np.concatenate([plan.step(s)[1] for s in range(3)])
  assert set(epoch.tolist()) == set(range(10))
  tiny = loader.StepPlan(np.zeros(3, int), [(8, 8)], 8, train=True)  # fewer than a batch
  assert tiny.steps_per_epoch == 1 and sorted(set(tiny.step(0)[1].tolist())) == [0, 1, 2]


def test_eval_plan_reads_each_record_once_grouped_by_canvas():
  record_canvas = np.array([0, 1, 2, 1, 1, 2, 1, 1, 0])
  plan = loader.StepPlan(record_canvas, SIZES, 2, train=False)
  # Smallest canvas first, file order within a canvas, each last batch padded.
  expected = [(2, [2, 5]), (1, [1, 3]), (1, [4, 6]), (1, [7, -1]), (0, [0, 8])]
  assert plan.num_steps == len(expected)
  for step, (canvas, indices) in enumerate(expected):
    got_canvas, got = plan.step(step)
    assert got_canvas == canvas
    np.testing.assert_array_equal(got, indices)
  with pytest.raises(IndexError):
    plan.step(plan.num_steps)


def test_plan_refuses_canvases_without_a_holder():
  with pytest.raises(ValueError, match='fits in no larger canvas'):
    loader.StepPlan(np.zeros(4, int), [(8, 16), (16, 8)], 2, train=True)


def test_record_store_round_trips_and_travels_as_a_file_name(tmp_path):
  records = [{'id': i, 'polygon': list(range(i * 50))} for i in range(200)]
  store = loader.RecordStore(records)
  assert len(store) == 200 and store[7] == records[7] and store[-1] == records[-1]
  sent = pickle.loads(pickle.dumps(store))
  assert [sent[i] for i in (0, 123, 199)] == [records[i] for i in (0, 123, 199)]
  assert len(pickle.dumps(store)) < store.nbytes / 10
  with pytest.raises(IndexError):
    store[200]
  path = store._path
  sent.close()  # a copy never deletes the file
  assert os.path.exists(path)
  store.close()
  assert not os.path.exists(path)


# Batches over a small COCO-format folder with landscape, portrait, square and wide images.
# Resized (shorter side 64, longer at most 128): 40 x 60 -> 64 x 96 and 60 x 40 -> 96 x 64
# (transposed: 64 x 96) on canvas 2 (64 x 128), as 30 x 70 -> 54 x 128; 48 x 48 -> 64 x 64
# on canvas 1. Canvas 0 (128 x 128) takes the leftovers.
IMAGE_SIZES = [(40, 60), (60, 40), (48, 48), (30, 70)]


def _batches_config(**overrides):
  c = default_config().data
  c.unlock()
  settings = dict(resize_mode='shorter_side', min_size=64, max_size=128,
                  train_min_sizes=(48, 64), image_size=(128, 128),
                  extra_canvases=((64, 64), (64, 128)), max_instances=3, mask_size=8,
                  num_workers=0, prefetch=2)
  c.update({**settings, **overrides})
  return c


@pytest.fixture(scope='module')
def varied(tmp_path_factory):
  """A 14-image COCO-format split of IMAGE_SIZES, each with 1-2 box-shaped instances."""
  root = tmp_path_factory.mktemp('varied')
  rng = np.random.default_rng(0)
  images, annotations = [], []
  for image_id in range(1, 15):
    height, width = IMAGE_SIZES[image_id % len(IMAGE_SIZES)]
    name = f'{image_id:03d}.png'
    Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).save(root / name)
    images.append({'id': image_id, 'file_name': name, 'height': height, 'width': width})
    for k in range(1 + image_id % 2):
      x, y = rng.uniform(0, width / 2), rng.uniform(0, height / 2)
      w, h = rng.uniform(4, width / 2), rng.uniform(4, height / 2)
      annotations.append({'id': image_id * 10 + k, 'image_id': image_id, 'category_id': 1 + k,
                          'bbox': [x, y, w, h], 'iscrowd': 0, 'area': w * h,
                          'segmentation': [[x, y, x + w, y, x + w, y + h, x, y + h]]})
  path = root / 'instances.json'
  path.write_text(json.dumps({'images': images, 'annotations': annotations, 'categories': [
      {'id': 1, 'name': 'a'}, {'id': 2, 'name': 'b'}]}))
  return coco.load_coco(str(path), str(root), filter_empty=False)


def _take(batches, count=None):
  with batches:
    return list(batches) if count is None else [next(batches) for _ in range(count)]


def _assert_same(stream_a, stream_b):
  assert len(stream_a) == len(stream_b)
  for a, b in zip(stream_a, stream_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _check_on_canvas(batch, by_id, cfg, train):
  """One canvas per batch; each example inside it, transposed iff a portrait."""
  sizes = transforms.canvas_sizes(cfg)
  height, width = batch['images'].shape[1:3]
  assert (height, width) in sizes
  for i, image_id in enumerate(batch['image_id']):
    if image_id == examples.PADDING_IMAGE_ID:
      assert not batch['images'][i].any() and not batch['gt_classes'][i].any()
      continue
    record = by_id[int(image_id)]
    own = transforms.choose_canvas(record.height, record.width, cfg, train)
    own_h, own_w = sizes[own.index]
    assert own_h <= height and own_w <= width  # its own canvas or one holding it
    info = batch['image_info'][i]
    assert bool(info[4]) == (record.height > record.width)
    valid_h, valid_w = int(info[0]), int(info[1])
    assert 0 < valid_h <= height and 0 < valid_w <= width
    assert not batch['images'][i, valid_h:].any() and not batch['images'][i, :, valid_w:].any()


def test_batches_train_stream_on_canvases(varied):
  cfg = _batches_config()
  by_id = {r.image_id: r for r in varied.records}
  batches = pipeline.Batches(varied, cfg, 4, train=True, seed=5)
  stream = _take(batches, 8)
  assert batches.wait_seconds > 0
  for batch in stream:
    _check_on_canvas(batch, by_id, cfg, train=True)
    assert batch['images'].dtype == np.uint8 and batch['image_info'].shape == (4, 5)
  # 14 images: 4 of 48 x 48 (canvas 1) -> 1 batch; 10 on canvas 2 -> 2 batches and 2
  # left over to canvas 0 -> 1 batch, topped up: 4 steps an epoch, each image in each.
  ids = [np.concatenate([b['image_id'] for b in stream[e * 4:(e + 1) * 4]]) for e in range(2)]
  for epoch_ids in ids:
    assert set(epoch_ids.tolist()) == set(by_id)
  assert sorted(b['images'].shape[1:3] for b in stream[:4]) == [(64, 64), (64, 128),
                                                                 (64, 128), (128, 128)]
  scales = np.concatenate([b['image_info'][:, 2] for b in stream])
  flips = np.concatenate([b['image_info'][:, 3] for b in stream])
  assert 0 < flips.mean() < 1 and len(set(np.round(scales, 4).tolist())) > 4


def test_batch_table(varied):
  batch = _take(pipeline.Batches(varied, _batches_config(), 4, train=False), 1)[0]
  expected = {'images': ((4, 64, 64, 3), np.uint8), 'image_info': ((4, 5), np.float32),
              'gt_boxes': ((4, 3, 4), np.float32), 'gt_classes': ((4, 3), np.int32),
              'gt_masks': ((4, 3, 8, 8), np.uint8), 'gt_is_crowd': ((4, 3), np.bool_),
              'image_id': ((4,), np.int64)}
  assert {k: (v.shape, v.dtype.type) for k, v in batch.items()} == expected


def test_truncation_is_logged(varied, caplog):
  with caplog.at_level(logging.INFO):
    pipeline.Batches(varied, _batches_config(max_instances=1), 2, train=True).close()
  assert '7 of 14 images have more than data.max_instances = 1' in caplog.text


def test_each_slot_is_prepare_example_with_its_position_rng(varied):
  cfg = _batches_config()
  by_id = {r.image_id: r for r in varied.records}
  host_1 = _take(pipeline.Batches(varied, cfg, 4, train=True, seed=7, process_index=1,
                                  process_count=2), 4)
  for step, batch in enumerate(host_1):
    height, width = batch['images'].shape[1:3]
    index = transforms.canvas_sizes(cfg).index((height, width))
    for j, image_id in enumerate(batch['image_id']):
      record = by_id[int(image_id)]
      canvas = transforms.Canvas(index, height, width, record.height > record.width)
      position = step * 4 + 2 + j  # host 1 holds slots 2 and 3 of each global batch
      expected = examples.prepare_example(record, cfg, canvas,
                                          np.random.default_rng([7, position, 1]))
      for key, value in expected.items():
        np.testing.assert_array_equal(batch[key][j], value, err_msg=key)


def test_batches_resume_and_seed(varied):
  cfg = _batches_config()
  stream = _take(pipeline.Batches(varied, cfg, 4, train=True, seed=5), 7)
  resumed = _take(pipeline.Batches(varied, cfg, 4, train=True, seed=5, start_step=5), 2)
  _assert_same(stream[5:], resumed)
  other = _take(pipeline.Batches(varied, cfg, 4, train=True, seed=6), 2)
  assert not all(np.array_equal(a['image_id'], b['image_id']) for a, b in zip(stream, other))


def test_hosts_partition_the_global_batch(varied):
  cfg = _batches_config()
  for train, count in ((True, 5), (False, None)):  # None: the whole evaluation pass
    whole = _take(pipeline.Batches(varied, cfg, 4, train=train, seed=2), count)
    hosts = [_take(pipeline.Batches(varied, cfg, 4, train=train, seed=2, process_index=p,
                                    process_count=2), count) for p in range(2)]
    assert len(whole) == len(hosts[0]) == len(hosts[1]) == (count or 4)
    for step in range(len(whole)):
      assert hosts[0][step]['images'].shape[0] == 2
      for key in whole[step]:
        np.testing.assert_array_equal(
            np.concatenate([hosts[0][step][key], hosts[1][step][key]]), whole[step][key])
  with pytest.raises(ValueError, match='not divisible'):
    pipeline.Batches(varied, cfg, 5, train=True, process_count=2)


def test_eval_reads_every_image_once_grouped_by_canvas(varied):
  cfg = _batches_config(random_flip=True)
  by_id = {r.image_id: r for r in varied.records}
  with pipeline.Batches(varied, cfg, 4, train=False) as batches:
    # canvas 1: 4 images -> 1 step; canvas 2: 10 -> 3 steps (2 padding examples)
    assert batches.num_steps == 4
    stream = list(batches)
  assert [b['images'].shape[1:3] for b in stream] == [(64, 64)] + [(64, 128)] * 3
  ids = np.concatenate([b['image_id'] for b in stream])
  real = ids[ids != examples.PADDING_IMAGE_ID]
  assert sorted(real.tolist()) == sorted(by_id) and len(real) == len(by_id)
  np.testing.assert_array_equal(ids[-2:], [examples.PADDING_IMAGE_ID] * 2)
  for batch in stream:
    _check_on_canvas(batch, by_id, cfg, train=False)
    assert not batch['image_info'][:, 3].any()  # no flips in evaluation
    for i, image_id in enumerate(batch['image_id']):
      if image_id != examples.PADDING_IMAGE_ID:  # exactly its own canvas, at the test resize
        record = by_id[int(image_id)]
        canvas = transforms.choose_canvas(record.height, record.width, cfg, train=False)
        assert batch['images'].shape[1:3] == (canvas.height, canvas.width)
        new_h, new_w, _ = transforms.resize_shape(record.height, record.width,
                                                  'shorter_side', 64, 128)
        expected = (new_w, new_h) if canvas.transpose else (new_h, new_w)
        assert tuple(batch['image_info'][i, :2]) == expected
  # File order within a canvas.
  grouped = [[int(i) for i in b['image_id'] if i >= 0] for b in stream]
  assert grouped[0] == [r.image_id for r in varied.records if (r.height, r.width) == (48, 48)]
  assert sum(grouped[1:], []) == [r.image_id for r in varied.records
                                  if (r.height, r.width) != (48, 48)]


@pytest.mark.slow
def test_batches_same_with_0_1_2_workers(varied):
  streams = [_take(pipeline.Batches(varied, _batches_config(num_workers=workers), 4,
                                    train=True, seed=3, start_step=2), 5)
             for workers in (0, 1, 2)]
  _assert_same(streams[0], streams[1])
  _assert_same(streams[0], streams[2])


@pytest.mark.slow
def test_corrupt_image_in_a_worker_names_its_file_and_id(varied, tmp_path):
  broken = tmp_path / 'broken.png'
  broken.write_bytes(b'not an image')
  records = [dataclasses.replace(r, path=str(broken)) for r in varied.records]
  bad = dataclasses.replace(varied, records=records)
  with pipeline.Batches(bad, _batches_config(num_workers=1), 2, train=False) as batches:
    with pytest.raises(structures.CocoFormatError,
                       match=r'image id \d+: cannot decode .*broken.png'):
      next(batches)


def test_coco_tiny_eval_at_the_1x_config(coco_tiny):
  cfg = default_config().data
  cfg.val_annotations = str(coco_tiny / 'annotations' / 'instances_val2017.json')
  cfg.val_images = str(coco_tiny / 'val2017')
  cfg.num_workers = 0
  dataset = pipeline.load_split(cfg, 'val')
  by_id = {r.image_id: r for r in dataset.records}
  with pipeline.Batches(dataset, cfg, 8, train=False) as batches:
    stream = list(batches)
  ids = np.concatenate([b['image_id'] for b in stream])
  assert sorted(ids[ids >= 0].tolist()) == sorted(by_id)
  shapes_seen = set()
  for batch in stream:
    _check_on_canvas(batch, by_id, cfg, train=False)
    shapes_seen.add(batch['images'].shape[1:3])
  assert len(shapes_seen) > 1  # real photos use more than one canvas


@contextlib.contextmanager
def _fails_after(seconds):
  """Fails the test instead of hanging when a worker's death goes unnoticed."""
  def fail(*_):
    raise TimeoutError(f'no error within {seconds} s')
  previous = signal.signal(signal.SIGALRM, fail)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.slow
def test_killed_worker_raises_quickly(varied):
  with pipeline.Batches(varied, _batches_config(num_workers=2), 4, train=True) as batches:
    next(batches)
    workers = [p for p in multiprocessing.active_children() if 'grain' in p.name]
    assert len(workers) == 2
    os.kill(workers[0].pid, signal.SIGKILL)
    start = time.perf_counter()
    with _fails_after(60), pytest.raises(
        RuntimeError, match='terminated unexpectedly with exit code -9'):
      for _ in range(100):
        next(batches)
    assert time.perf_counter() - start < 15


@pytest.mark.slow
def test_workers_prepare_the_next_batch_during_the_step(coco_tiny):
  cfg = default_config().data
  cfg.train_annotations = str(coco_tiny / 'annotations' / 'instances_val2017.json')
  cfg.train_images = str(coco_tiny / 'val2017')
  dataset = pipeline.load_split(cfg, 'train')
  waits = {}
  for workers in (0, 1):
    cfg.num_workers = workers
    with pipeline.Batches(dataset, cfg, 4, train=True) as batches:
      next(batches)  # includes the worker's start-up
      start = batches.wait_seconds
      for _ in range(3):
        time.sleep(0.5)  # a device step
        next(batches)
      waits[workers] = batches.wait_seconds - start
  assert waits[0] > 0.05, waits  # 3 batches of 4 real photos at the 1x resize
  assert waits[1] < waits[0] / 3, waits


# Logs the name of every shared-memory segment made, in this process and in its spawned
# grain workers (both read sitecustomize from PYTHONPATH).
_LOG_SEGMENTS = """
import os
from multiprocessing import shared_memory
_init = shared_memory.SharedMemory.__init__
def _logged(self, name=None, create=False, size=0):
  _init(self, name, create, size)
  if create:
    with open(os.environ['SEGMENT_LOG'], 'a') as f:
      f.write(self.name + '\\n')
shared_memory.SharedMemory.__init__ = _logged
"""

_FINITE_AND_CLOSED_STREAMS = """
import json, sys
import numpy as np
from PIL import Image
from maskrcnn_jax.config import default_config
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import pipeline
root = sys.argv[1]
images, annotations = [], []
for i in range(1, 6):
  Image.fromarray(np.full((48, 64, 3), 40 * i, np.uint8)).save(f'{root}/{i}.png')
  images.append({'id': i, 'file_name': f'{i}.png', 'height': 48, 'width': 64})
  annotations.append({'id': i, 'image_id': i, 'category_id': 1, 'bbox': [4, 4, 20, 20],
                      'iscrowd': 0, 'area': 400, 'segmentation': [[4, 4, 24, 4, 24, 24, 4, 24]]})
with open(f'{root}/instances.json', 'w') as f:
  json.dump({'images': images, 'annotations': annotations,
             'categories': [{'id': 1, 'name': 'a'}]}, f)
dataset = coco.load_coco(f'{root}/instances.json', root, filter_empty=False)
c = default_config().data
c.update(dict(resize_mode='shorter_side', min_size=64, max_size=128, train_min_sizes=(64,),
              image_size=(128, 128), extra_canvases=(), max_instances=2, mask_size=8,
              num_workers=1, prefetch=2))
with pipeline.Batches(dataset, c, 2, train=True) as batches:
  next(batches)  # closed with batches in flight
with pipeline.Batches(dataset, c, 2, train=False) as batches:
  assert len(list(batches)) == 3  # to its end, just before the exit (as a final eval)
print('ok')
"""


@pytest.mark.slow
def test_worker_streams_leave_no_shared_memory_behind(tmp_path):
  """No "leaked shared_memory" report at exit, and no segment left in /dev/shm."""
  (tmp_path / 'sitecustomize.py').write_text(_LOG_SEGMENTS)
  log = tmp_path / 'segments.txt'
  env = dict(os.environ, PYTHONPATH=str(tmp_path), SEGMENT_LOG=str(log), JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', _FINITE_AND_CLOSED_STREAMS, str(tmp_path)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr[-3000:]
  assert 'leaked shared_memory' not in result.stderr, result.stderr[-3000:]
  segments = log.read_text().split()
  assert len(segments) >= 4  # the images of 3 + 1 batches went through shared memory
  left = [name for name in segments if os.path.exists(os.path.join('/dev/shm', name))]
  assert not left, left
