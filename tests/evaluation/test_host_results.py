"""evaluation/: box-region pasting and region RLE against inference/paste.py's paste_mask and
pycocotools' encode; COCO results of batches; the worker processes."""

import subprocess
import sys
import textwrap

import numpy as np
from pycocotools import mask as mask_util
import pytest

from benchmarks import evaluation as eval_benchmark
from maskrcnn_jax.data import examples
from maskrcnn_jax.data import transforms
from maskrcnn_jax.evaluation import coco_results
from maskrcnn_jax.evaluation import region_masks
from maskrcnn_jax.evaluation import worker_processes
from maskrcnn_jax.inference import paste
from tests.conftest import REPO_ROOT


def _full_rle(mask):
  rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)[:, :, None]))[0]
  return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}


def _cases(rng, height, width, count):
  """Boxes of every kind: inside, crossing each border, tiny, degenerate, whole image."""
  boxes = []
  for _ in range(count):
    w, h = np.exp(rng.uniform(np.log(0.5), np.log(1.5 * max(height, width)), 2))
    x1, y1 = rng.uniform(-0.3 * width, width, 1)[0], rng.uniform(-0.3 * height, height, 1)[0]
    boxes.append([x1, y1, x1 + w, y1 + h])
  boxes += [[0, 0, width, height], [-5, -5, width + 5, height + 5], [3, 3, 3, 9],
            [10, 4, 6, 20], [width - 0.2, 2, width + 4, 9], [2.5, 2.5, 3.1, 3.2]]
  return np.array(boxes)


@pytest.mark.parametrize('method', ['bilinear', 'torchvision'])
def test_region_paste_and_rle_match_the_full_mask(method):
  rng = np.random.default_rng(0)
  checked = 0
  for height, width in ((37, 53), (64, 48), (1, 9)):
    boxes = _cases(rng, height, width, 60)
    for k, box in enumerate(boxes):
      size = (28, 14, 1)[k % 3]
      probs = rng.uniform(0, 1, (size, size)).astype(np.float32)
      if k % 4 == 0:  # saturated: runs spanning whole columns, hence joined across them
        probs[:] = 1.0
      expected = paste.paste_mask(probs, box, height, width, threshold=0.5, method=method)
      region, row0, col0 = region_masks.paste_region(probs, box, height, width, 0.5, method)
      pasted = np.zeros((height, width), bool)
      pasted[row0:row0 + region.shape[0], col0:col0 + region.shape[1]] = region
      np.testing.assert_array_equal(pasted, expected)
      assert region_masks.encode_region(region, row0, col0, height, width) == \
          _full_rle(expected)
      checked += int(expected.any())
  assert checked > 75  # non-empty masks among the 198 cases


def _near_threshold_probs(rng, size, kind):
  """Masks whose pasted values land on or next to 0.5, where rounding decides."""
  if kind == 'constant':
    return np.full((size, size), 0.5, np.float32)
  if kind == 'ulps':  # 0.5 and its float32 neighbours
    steps = rng.integers(-3, 4, (size, size)).astype(np.float32)
    return (np.float32(0.5) + steps * np.float32(2.0 ** -25)).astype(np.float32)
  if kind == 'quarters':  # ties of exact weights (integer-aligned boxes)
    return rng.integers(0, 5, (size, size)).astype(np.float32) / 4
  if kind == 'halves':  # 0.5 rows and columns between 0s and 1s
    probs = rng.integers(0, 3, (size, size)).astype(np.float32) / 2
    probs[size // 2] = 0.5
    probs[:, size // 3] = 0.5
    return probs
  raise ValueError(kind)


@pytest.mark.parametrize('method', ['bilinear', 'torchvision'])
def test_region_paste_at_the_threshold_matches_the_full_mask(method):
  # The bilinear paste is computed in float32 and rechecked in float64 near the
  # threshold; these masks put most pixels there.
  rng = np.random.default_rng(5)
  height, width = 41, 57
  corners = rng.integers(-8, 50, (40, 2))  # integer boxes of 1/4 .. 2 mask sides too
  sides = rng.choice([1, 3, 7, 14, 21, 28, 56], (40, 2))
  boxes = np.concatenate([_cases(rng, height, width, 40),
                          np.concatenate([corners, corners + sides], 1)])
  for k, box in enumerate(boxes):
    size = (28, 14, 3)[k % 3]
    for kind in ('constant', 'ulps', 'quarters', 'halves'):
      probs = _near_threshold_probs(rng, size, kind)
      for threshold in (0.5, 0.25, np.nextafter(np.float32(0.5), np.float32(1))):
        expected = paste.paste_mask(probs, box, height, width, threshold, method)
        region, row0, col0 = region_masks.paste_region(probs, box, height, width, threshold,
                                                       method)
        pasted = np.zeros((height, width), bool)
        pasted[row0:row0 + region.shape[0], col0:col0 + region.shape[1]] = region
        np.testing.assert_array_equal(pasted, expected, f'{kind} {box} {threshold}')


@pytest.mark.parametrize('method', ['bilinear', 'torchvision'])
def test_region_paste_of_non_finite_or_huge_probabilities(method):
  rng = np.random.default_rng(6)
  for value in (np.nan, np.inf, -np.inf, 3e38):
    probs = rng.uniform(0, 1, (14, 14)).astype(np.float32)
    probs[rng.integers(0, 14, 5), rng.integers(0, 14, 5)] = value
    box = (3.3, 2.1, 30.7, 25.2)
    with np.errstate(invalid='ignore', over='ignore'):
      expected = paste.paste_mask(probs, box, 31, 40, 0.5, method)
      region, row0, col0 = region_masks.paste_region(probs, box, 31, 40, 0.5, method)
    pasted = np.zeros((31, 40), bool)
    pasted[row0:row0 + region.shape[0], col0:col0 + region.shape[1]] = region
    np.testing.assert_array_equal(pasted, expected, str(value))


@pytest.mark.parametrize('method', ['bilinear', 'torchvision'])
def test_image_results_match_full_masks(method):
  outputs, original_hw = eval_benchmark.synthetic_outputs(1, per_image=40, seed=7)
  height, width = original_hw[0]
  _, segms = coco_results.image_results(
      outputs['boxes'][0], outputs['scores'][0], outputs['classes'][0], outputs['masks'][0],
      1, outputs['image_info'][0], original_hw[0], list(range(1, 81)), 0.5, method)
  # Not transposed: the boxes are only scaled from the 800 x 1067 canvas.
  boxes = transforms.resize_boxes(outputs['boxes'][0], 800, 1067, height, width)
  assert len(segms) == 40
  for box, probs, segm in zip(boxes, outputs['masks'][0], segms):
    expected = paste.paste_mask(probs, box, height, width, 0.5, method)
    assert segm['segmentation'] == _full_rle(expected), box


def test_region_runs_of_random_regions():
  rng = np.random.default_rng(1)
  for _ in range(200):
    height, width = rng.integers(1, 30, 2)
    h, w = rng.integers(0, height + 1), rng.integers(0, width + 1)
    row0, col0 = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
    region = rng.uniform(size=(h, w)) < rng.uniform(0, 1)
    full = np.zeros((height, width), bool)
    full[row0:row0 + h, col0:col0 + w] = region
    runs = region_masks.region_runs(region, row0, col0, height, width)
    flat = full.T.ravel()  # column-major
    # Reference written from the definition: lengths of maximal equal runs, 0s first.
    boundaries = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    expected = np.diff(np.r_[0, boundaries, flat.size])
    if flat[0]:
      expected = np.r_[0, expected]
    np.testing.assert_array_equal(runs, expected)


def test_batch_results_drop_padding_and_match_per_image_results():
  outputs, original_hw = eval_benchmark.synthetic_outputs(3, per_image=7, seed=2)
  outputs['image_id'][1] = examples.PADDING_IMAGE_ID
  outputs['valid'][2, 3:] = False
  category_ids = list(range(1, eval_benchmark.NUM_CATEGORIES + 1))
  boxes, segms = coco_results.batch_results(outputs, original_hw, category_ids, 0.5, 'bilinear')
  assert [r['image_id'] for r in boxes] == [1] * 7 + [3] * 3
  expected = coco_results.image_results(
      outputs['boxes'][2, :3], outputs['scores'][2, :3], outputs['classes'][2, :3],
      outputs['masks'][2, :3], 3, outputs['image_info'][2], original_hw[2], category_ids,
      0.5, 'bilinear')
  assert (boxes[7:], segms[7:]) == expected
  assert all(mask_util.decode(s['segmentation']).shape == (480, 640) for s in segms)


def test_a_model_without_masks_gives_the_same_boxes_and_no_segm():
  outputs, original_hw = eval_benchmark.synthetic_outputs(2, per_image=6, seed=4)
  category_ids = list(range(1, eval_benchmark.NUM_CATEGORIES + 1))
  with_masks = coco_results.batch_results(outputs, original_hw, category_ids, 0.5, 'bilinear')
  del outputs['masks']  # Keypoint R-CNN alone: no mask head
  boxes, segms = coco_results.batch_results(outputs, original_hw, category_ids, 0.5, 'bilinear')
  assert len(boxes) == 12 and boxes == with_masks[0] and segms == []


def test_worker_processes_give_the_same_results():
  outputs, original_hw = eval_benchmark.synthetic_outputs(2, per_image=5, seed=3)
  args = (outputs, original_hw, list(range(1, 81)), 0.5, 'torchvision')
  with worker_processes.process_pool(1) as pool:
    assert pool.submit(coco_results.batch_results, *args).result() == \
        coco_results.batch_results(*args)


def test_started_pool_runs_every_worker_before_returning():
  outputs, original_hw = eval_benchmark.synthetic_outputs(1, per_image=3, seed=4)
  args = (outputs, original_hw, list(range(1, 81)), 0.5, 'bilinear')
  with worker_processes.process_pool(2, started=True) as pool:
    assert len(pool._processes) == 2  # pylint: disable=protected-access
    assert all(p.is_alive() for p in pool._processes.values())  # pylint: disable=protected-access
    assert pool.submit(coco_results.batch_results, *args).result() == \
        coco_results.batch_results(*args)


def test_worker_processes_do_not_rerun_the_main_script(tmp_path):
  # A script's top level (in real runs: importing jax and the trainer) runs once, in the
  # parent: the workers never import __main__.
  script = tmp_path / 'main_script.py'
  script.write_text(textwrap.dedent(f"""
      import os
      from maskrcnn_jax.evaluation import worker_processes
      with open({str(tmp_path / 'runs')!r}, 'a') as f:
        f.write(str(os.getpid()) + chr(10))
      if __name__ == '__main__':
        with worker_processes.process_pool(2, started=True) as pool:
          assert pool.submit(worker_processes.num_workers, 3).result() == 3
  """))
  subprocess.run([sys.executable, str(script)], cwd=REPO_ROOT, check=True, timeout=120)
  assert len((tmp_path / 'runs').read_text().splitlines()) == 1


def test_num_workers():
  assert worker_processes.num_workers(0) == 0 and worker_processes.num_workers(3) == 3
  assert 1 <= worker_processes.num_workers(-1) <= 8
  with pytest.raises(ValueError, match='eval.host_workers'):
    worker_processes.num_workers(-2)
