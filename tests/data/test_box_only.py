"""Box-only COCO annotations (no segmentation): read, batched without masks, refused to a
mask head, and trained and evaluated (bbox) with the mask head off."""

import json

import numpy as np
import pytest

from maskrcnn_jax.data import coco
from maskrcnn_jax.data import mask_decoding
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import shapes
from maskrcnn_jax.data import structures
from tests.data.test_batches import batches_config

# The forms of "no segmentation" Detectron2's `if segm:` accepts, in turn.
_NO_SEGMENTATION = ('no key', None, [], {})


def strip_segmentations(annotation_file: str, out_file: str, every: int = 1) -> list[int]:
  """Writes `annotation_file` with every `every`-th annotation's segmentation removed (in
  the forms of _NO_SEGMENTATION, in turn); returns their ids."""
  with open(annotation_file) as f:
    data = json.load(f)
  stripped = []
  for i, ann in enumerate(data['annotations']):
    if i % every:
      continue
    form = _NO_SEGMENTATION[len(stripped) % len(_NO_SEGMENTATION)]
    if form == 'no key':
      del ann['segmentation']
    else:
      ann['segmentation'] = form
    stripped.append(ann['id'])
  with open(out_file, 'w') as f:
    json.dump(data, f)
  return stripped


@pytest.fixture(scope='module')
def mixed(tmp_path_factory):
  """(dataset with masks, the same with every other annotation's segmentation removed,
  the ids removed)."""
  root = tmp_path_factory.mktemp('shapes')
  path, image_dir = shapes.write_split(str(root), 'train', 6, 64, seed=0)
  stripped = strip_segmentations(path, str(root / 'mixed.json'), every=2)
  return (coco.load_coco(path, image_dir, filter_empty=False),
          coco.load_coco(str(root / 'mixed.json'), image_dir, filter_empty=False), stripped)


def test_annotations_without_segmentation_are_read_as_box_only(mixed):
  full, box_only, stripped = mixed
  assert len(stripped) >= 8  # every form at least twice
  assert box_only.num_without_segmentation == len(stripped)
  assert box_only.without_segmentation_ids == tuple(stripped[:5])
  assert full.num_without_segmentation == 0 and full.without_segmentation_ids == ()
  assert not any(box_only.skipped.values())
  for record, reference in zip(box_only.records, full.records, strict=True):
    for field in ('annotation_ids', 'boxes', 'classes', 'is_crowd'):
      np.testing.assert_array_equal(getattr(record, field), getattr(reference, field))
    for ann_id, segmentation, kept in zip(record.annotation_ids, record.segmentations,
                                          reference.segmentations):
      assert segmentation == (None if ann_id in stripped else kept)
    masks = mask_decoding.decode_masks(record)  # zeros for the box-only instances
    box_only_rows = np.isin(record.annotation_ids, stripped)
    assert not masks[box_only_rows].any()
    np.testing.assert_array_equal(masks[~box_only_rows],
                                  mask_decoding.decode_masks(reference)[~box_only_rows])


def test_check_masks_refuses_box_only_instances_to_a_mask_head(mixed):
  full, box_only, stripped = mixed
  coco.check_masks(box_only, mask_head_enabled=False)
  coco.check_masks(full, mask_head_enabled=True)
  with pytest.raises(ValueError) as error:
    coco.check_masks(box_only, mask_head_enabled=True)
  message = str(error.value)
  assert message == (
      f'{box_only.annotation_file}: {len(stripped)} annotations have no segmentation (e.g. '
      f'annotation id {stripped[0]}) but model.mask_head.enabled is True: train boxes only '
      'with --config.model.mask_head.enabled=False, or give every annotation its '
      'segmentation')
  record = next(r for r in box_only.records if stripped[0] in r.annotation_ids)
  with pytest.raises(structures.CocoFormatError,
                     match=rf'annotation id {stripped[0]}: no segmentation \(a box-only'):
    mask_decoding.instance_rle(record, list(record.annotation_ids).index(stripped[0]))


@pytest.mark.parametrize('train', [False, True])
def test_batches_give_box_only_instances_zero_masks(mixed, train):
  full, box_only, stripped = mixed
  config = batches_config(image_size=(64, 64), extra_canvases=(), min_size=64, max_size=64,
                          train_min_sizes=(48, 64), max_instances=8)
  streams = []
  for dataset in (full, box_only):
    with pipeline.Batches(dataset, config, 2, train=train, seed=0) as batches:
      streams.append([next(batches) for _ in range(3)])
  records = {r.image_id: r for r in box_only.records}
  box_only_slots = 0
  for want, got in zip(*streams):
    for key in want:
      if key != 'gt_masks':
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    for slot, image_id in enumerate(got['image_id']):
      if image_id == -1:
        continue
      # Without a crop, instance j of a batch is instance j of the record.
      ids = records[int(image_id)].annotation_ids[:config.max_instances]
      without = np.isin(ids, stripped)
      box_only_slots += int(without.sum())
      assert not got['gt_masks'][slot, :len(ids)][without].any()
      assert want['gt_masks'][slot, :len(ids)][without].any(axis=(1, 2)).all()
      np.testing.assert_array_equal(got['gt_masks'][slot, :len(ids)][~without],
                                    want['gt_masks'][slot, :len(ids)][~without])
  assert box_only_slots > 0


@pytest.mark.slow
def test_a_box_only_dataset_trains_and_evaluates_boxes_with_the_mask_head_off(tmp_path):
  from maskrcnn_jax.train import loop  # pylint: disable=import-outside-toplevel
  from tests.conftest import load_config  # pylint: disable=import-outside-toplevel

  config = load_config('tiny')
  d, t = config.data, config.train
  root = tmp_path / 'shapes'
  for split, num_images in (('train', 2), ('val', 2)):
    path, images = shapes.write_split(str(root), split, num_images, 64, seed=0)
    strip_segmentations(path, str(root / f'{split}_boxes.json'))
    d[f'{split}_annotations'], d[f'{split}_images'] = str(root / f'{split}_boxes.json'), images
  config.model.mask_head.enabled = False
  config.eval.batch_size = 2
  t.batch_size, t.num_steps, t.log_every, t.checkpoint_every = 2, 2, 1, 2
  train_set = pipeline.load_split(d, 'train')
  assert train_set.num_without_segmentation == sum(r.num_instances for r in train_set.records)
  with pytest.raises(ValueError, match='--config.model.mask_head.enabled=False'):
    coco.check_masks(train_set, mask_head_enabled=True)

  result = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert result['step'] == 2 and 'mask' not in result['train']
  assert np.isfinite(result['train']['total'])
  assert 'segm' not in result['eval']
  assert set(result['eval']['bbox']) >= {'AP', 'AP50', 'per_category'}
  assert -1 <= result['eval']['bbox']['AP'] <= 1
  assert (tmp_path / 'run' / 'eval' / 'results_bbox.json').is_file()
  assert not (tmp_path / 'run' / 'eval' / 'results_segm.json').exists()
