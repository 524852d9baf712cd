"""data/loader.py: the step plan, the record store, and the worker processes behind
pipeline.Batches (the same batches with any worker count, errors, shared memory)."""

import contextlib
import dataclasses
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from maskrcnn_jax.config import default_config
from maskrcnn_jax.data import loader
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import structures
from tests.conftest import REPO_ROOT
from tests.data import test_batches

# Canvas 0 (8 x 16) holds both others; canvas 2 (4 x 12) is smaller than canvas 1 (8 x 8)
# but does not fit in it, so its leftovers skip canvas 1 and go straight to canvas 0.
SIZES = [(8, 16), (8, 8), (4, 12)]
varied = test_batches.varied  # the fixture: images of varied sizes


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


@pytest.mark.slow
def test_batches_same_with_0_1_2_workers(varied):
  streams = [test_batches.take_batches(pipeline.Batches(varied, test_batches.batches_config(num_workers=workers), 4,
                                    train=True, seed=3, start_step=2), 5)
             for workers in (0, 1, 2)]
  test_batches.assert_same_batches(streams[0], streams[1])
  test_batches.assert_same_batches(streams[0], streams[2])


@pytest.mark.slow
def test_corrupt_image_in_a_worker_names_its_file_and_id(varied, tmp_path):
  broken = tmp_path / 'broken.png'
  broken.write_bytes(b'not an image')
  records = [dataclasses.replace(r, path=str(broken)) for r in varied.records]
  bad = dataclasses.replace(varied, records=records)
  with pipeline.Batches(bad, test_batches.batches_config(num_workers=1), 2, train=False) as batches:
    with pytest.raises(structures.CocoFormatError,
                       match=r'image id \d+: cannot decode .*broken.png'):
      next(batches)


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
  with pipeline.Batches(varied, test_batches.batches_config(num_workers=2), 4, train=True) as batches:
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
      waits[workers] = 0.0
      for _ in range(3):
        time.sleep(0.5)  # a device step
        start = time.perf_counter()
        next(batches)  # the consumer's wait for the batch
        waits[workers] += time.perf_counter() - start
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
