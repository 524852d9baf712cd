"""Box-region pasting and region RLE against ops.masks.paste_mask + pycocotools' encode."""

import numpy as np
from pycocotools import mask as mask_util
import pytest

from maskrcnn_jax import eval_host
from maskrcnn_jax import eval_benchmark
from maskrcnn_jax.ops import masks as mask_ops


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
      expected = mask_ops.paste_mask(probs, box, height, width, threshold=0.5, method=method)
      region, row0, col0 = eval_host.paste_region(probs, box, height, width, 0.5, method)
      pasted = np.zeros((height, width), bool)
      pasted[row0:row0 + region.shape[0], col0:col0 + region.shape[1]] = region
      np.testing.assert_array_equal(pasted, expected)
      assert eval_host.encode_region(region, row0, col0, height, width) == \
          _full_rle(expected)
      checked += int(expected.any())
  assert checked > 75  # non-empty masks among the 198 cases


def test_region_runs_of_random_regions():
  rng = np.random.default_rng(1)
  for _ in range(200):
    height, width = rng.integers(1, 30, 2)
    h, w = rng.integers(0, height + 1), rng.integers(0, width + 1)
    row0, col0 = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
    region = rng.uniform(size=(h, w)) < rng.uniform(0, 1)
    full = np.zeros((height, width), bool)
    full[row0:row0 + h, col0:col0 + w] = region
    runs = eval_host.region_runs(region, row0, col0, height, width)
    flat = full.T.ravel()  # column-major
    # Reference written from the definition: lengths of maximal equal runs, 0s first.
    boundaries = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    expected = np.diff(np.r_[0, boundaries, flat.size])
    if flat[0]:
      expected = np.r_[0, expected]
    np.testing.assert_array_equal(runs, expected)


def test_batch_results_drop_padding_and_match_per_image_results():
  outputs, original_hw = eval_benchmark.synthetic_outputs(3, per_image=7, seed=2)
  outputs['image_id'][1] = eval_host.PADDING_IMAGE_ID
  outputs['valid'][2, 3:] = False
  category_ids = list(range(1, eval_benchmark.NUM_CATEGORIES + 1))
  boxes, segms = eval_host.batch_results(outputs, original_hw, category_ids, 0.5, 'bilinear')
  assert [r['image_id'] for r in boxes] == [1] * 7 + [3] * 3
  expected = eval_host.image_results(
      outputs['boxes'][2, :3], outputs['scores'][2, :3], outputs['classes'][2, :3],
      outputs['masks'][2, :3], 3, outputs['image_info'][2], original_hw[2], category_ids,
      0.5, 'bilinear')
  assert (boxes[7:], segms[7:]) == expected
  assert all(mask_util.decode(s['segmentation']).shape == (480, 640) for s in segms)


def test_a_model_without_masks_gives_the_same_boxes_and_no_segm():
  outputs, original_hw = eval_benchmark.synthetic_outputs(2, per_image=6, seed=4)
  category_ids = list(range(1, eval_benchmark.NUM_CATEGORIES + 1))
  with_masks = eval_host.batch_results(outputs, original_hw, category_ids, 0.5, 'bilinear')
  del outputs['masks']  # Keypoint R-CNN alone: no mask head
  boxes, segms = eval_host.batch_results(outputs, original_hw, category_ids, 0.5, 'bilinear')
  assert len(boxes) == 12 and boxes == with_masks[0] and segms == []


def test_worker_processes_give_the_same_results():
  outputs, original_hw = eval_benchmark.synthetic_outputs(2, per_image=5, seed=3)
  args = (outputs, original_hw, list(range(1, 81)), 0.5, 'torchvision')
  with eval_host.process_pool(1) as pool:
    assert pool.submit(eval_host.batch_results, *args).result() == \
        eval_host.batch_results(*args)


def test_num_workers():
  assert eval_host.num_workers(0) == 0 and eval_host.num_workers(3) == 3
  assert 1 <= eval_host.num_workers(-1) <= 8
  with pytest.raises(ValueError, match='eval.host_workers'):
    eval_host.num_workers(-2)
