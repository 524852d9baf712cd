"""Tests of data/coco.py: reading, crowd and empty images, bad input, the real COCO slice."""

import io
import json
import logging

import numpy as np
from PIL import Image
from pycocotools import coco as coco_api
from pycocotools import cocoeval
import pytest

from maskrcnn_jax.data import coco
from maskrcnn_jax.data import image_files
from maskrcnn_jax.data import mask_decoding
from maskrcnn_jax.data import structures


def _write(tmp_path, images=None, annotations=None, categories=None):
  """A tiny valid dataset: two 20 x 30 images, three instances (one crowd); overrides."""
  image_dir = tmp_path / 'images'
  image_dir.mkdir(exist_ok=True)
  default_images = [{'id': 1, 'file_name': 'a.png', 'height': 20, 'width': 30},
                    {'id': 7, 'file_name': 'b.png', 'height': 20, 'width': 30},
                    {'id': 9, 'file_name': 'c.png', 'height': 20, 'width': 30}]
  for image in default_images:
    Image.fromarray(np.full((20, 30, 3), image['id'], np.uint8)).save(
        image_dir / image['file_name'])
  crowd_runs = [45, 10, 545]  # column-major: column 2, rows 5..14
  default_annotations = [
      {'id': 10, 'image_id': 1, 'category_id': 5, 'iscrowd': 0, 'bbox': [2, 3, 8, 6],
       'segmentation': [[2, 3, 10, 3, 10, 9, 2, 9]]},
      {'id': 11, 'image_id': 1, 'category_id': 3, 'iscrowd': 1, 'bbox': [2, 5, 1, 10],
       'segmentation': {'counts': crowd_runs, 'size': [20, 30]}},
      {'id': 12, 'image_id': 7, 'category_id': 3, 'iscrowd': 0, 'bbox': [0, 0, 30, 20],
       'segmentation': [[0, 0, 30, 0, 30, 20, 0, 20]]},
      {'id': 13, 'image_id': 9, 'category_id': 5, 'iscrowd': 1, 'bbox': [2, 5, 1, 10],
       'segmentation': {'counts': crowd_runs, 'size': [20, 30]}},
  ]
  data = {'images': default_images if images is None else images,
          'annotations': default_annotations if annotations is None else annotations,
          'categories': categories or [{'id': 5, 'name': 'five'}, {'id': 3, 'name': 'three'}]}
  path = tmp_path / 'ann.json'
  path.write_text(json.dumps(data))
  return str(path), str(image_dir), data


def test_reads_instances_classes_and_crowd(tmp_path):
  path, image_dir, _ = _write(tmp_path)
  dataset = coco.load_coco(path, image_dir, filter_empty=False)
  assert dataset.category_ids == (3, 5) and dataset.class_names == ('three', 'five')
  assert [r.image_id for r in dataset.records] == [1, 7, 9]
  first = dataset.records[0]
  np.testing.assert_array_equal(first.annotation_ids, [10, 11])
  np.testing.assert_array_equal(first.boxes, [[2, 3, 10, 9], [2, 5, 3, 15]])
  np.testing.assert_array_equal(first.classes, [2, 1])
  np.testing.assert_array_equal(first.is_crowd, [False, True])
  masks = mask_decoding.decode_masks(first)
  assert masks.shape == (2, 20, 30) and masks.dtype == np.uint8
  assert masks[0].sum() == 8 * 6 and masks[0][3:9, 2:10].all()
  assert masks[1].sum() == 10 and masks[1][5:15, 2].all()
  image = image_files.read_image(first)
  assert image.shape == (20, 30, 3) and image.dtype == np.uint8 and (image == 1).all()


def test_filter_empty_keeps_crowd_only_images_out(tmp_path):
  path, image_dir, _ = _write(tmp_path)
  dataset = coco.load_coco(path, image_dir, filter_empty=True)
  assert [r.image_id for r in dataset.records] == [1, 7]  # image 9 has only a crowd region
  assert dataset.skipped['empty_images'] == 1


def test_truncated_json(tmp_path):
  path, image_dir, _ = _write(tmp_path)
  text = open(path).read()
  open(path, 'w').write(text[:len(text) // 2])
  with pytest.raises(structures.CocoFormatError, match=r'ann\.json: not valid JSON'):
    coco.load_coco(path, image_dir, filter_empty=False)


def test_missing_and_corrupt_images(tmp_path):
  path, image_dir, _ = _write(tmp_path)
  (tmp_path / 'images' / 'b.png').unlink()
  with pytest.raises(structures.CocoFormatError, match=r'image id 7: missing image .*b\.png'):
    coco.load_coco(path, image_dir, filter_empty=False)
  (tmp_path / 'images' / 'b.png').write_bytes(b'\x89PNG not really')
  record = coco.load_coco(path, image_dir, filter_empty=False).records[1]
  with pytest.raises(structures.CocoFormatError, match=r'image id 7: cannot decode .*b\.png'):
    image_files.read_image(record)


def test_image_size_mismatch(tmp_path):
  path, image_dir, data = _write(tmp_path)
  data['images'][0]['height'] = 21
  for ann in data['annotations'][:2]:  # keep the RLE consistent with the claimed size
    if ann['iscrowd']:
      ann['segmentation'] = {'counts': [21 * 30], 'size': [21, 30]}
  path, image_dir, _ = _write(tmp_path, images=data['images'], annotations=data['annotations'])
  record = coco.load_coco(path, image_dir, filter_empty=False).records[0]
  with pytest.raises(structures.CocoFormatError, match=r'image id 1: .*a\.png is 20 x 30'):
    image_files.read_image(record)


@pytest.mark.parametrize('segmentation, message', [
    ([[1, 2, 3, 4, 5, 6, 7]], 'odd number of coordinates'),
    ([[1, 2, 'x', 4, 5, 6]], 'list of numbers'),
    ('polygon', 'segmentation must be'),
    ({'counts': [600], 'size': [10, 60]}, 'not the image size'),
    ({'counts': 123, 'size': [20, 30]}, 'RLE counts'),
])
def test_malformed_segmentation_names_annotation(tmp_path, segmentation, message):
  path, image_dir, data = _write(tmp_path)
  data['annotations'][2]['segmentation'] = segmentation
  path, image_dir, _ = _write(tmp_path, annotations=data['annotations'])
  with pytest.raises(structures.CocoFormatError,
                     match=rf'ann\.json: annotation id 12: .*{message}'):
    coco.load_coco(path, image_dir, filter_empty=False)


def test_bad_rle_counts_fail_when_decoded(tmp_path):
  path, image_dir, data = _write(tmp_path)
  data['annotations'][1]['segmentation']['counts'] = [45, 10, 500]
  path, image_dir, _ = _write(tmp_path, annotations=data['annotations'])
  record = coco.load_coco(path, image_dir, filter_empty=False).records[0]
  with pytest.raises(structures.CocoFormatError, match=r'annotation id 11: RLE counts sum'):
    mask_decoding.decode_masks(record)


def test_degenerate_polygons_are_counted_skips(tmp_path):
  path, image_dir, data = _write(tmp_path)
  data['annotations'][0]['segmentation'].append([1, 1, 2, 2])  # dropped, instance kept
  data['annotations'][2]['segmentation'] = [[1, 1, 2, 2]]  # nothing left: instance skipped
  path, image_dir, _ = _write(tmp_path, annotations=data['annotations'])
  dataset = coco.load_coco(path, image_dir, filter_empty=False)
  assert dataset.skipped['degenerate_polygons'] == 2
  assert dataset.skipped['no_valid_segmentation'] == 1
  assert dataset.records[0].num_instances == 2 and dataset.records[1].num_instances == 0


def test_boxes_outside_or_empty(tmp_path, caplog):
  path, image_dir, data = _write(tmp_path)
  data['annotations'][0]['bbox'] = [-2, 15, 8, 10]  # reaches outside: clipped
  data['annotations'][2]['bbox'] = [5, 5, 0, 4]  # zero area: skipped
  data['annotations'][3]['bbox'] = [40, 5, 3, 3]  # entirely outside: skipped
  path, image_dir, _ = _write(tmp_path, annotations=data['annotations'])
  with caplog.at_level(logging.INFO):
    dataset = coco.load_coco(path, image_dir, filter_empty=False)
  assert dataset.skipped['clipped_boxes'] == 1 and dataset.skipped['empty_boxes'] == 2
  assert 'clipped_boxes 1 (ids 10), empty_boxes 2 (ids 12, 13)' in caplog.text
  assert caplog.records[-1].levelno == logging.WARNING
  np.testing.assert_array_equal(dataset.records[0].boxes[0], [0, 15, 6, 20])
  assert sum(r.num_instances for r in dataset.records) == 2
  data['annotations'][1]['bbox'] = [1, 2, 3]
  path, image_dir, _ = _write(tmp_path, annotations=data['annotations'])
  with pytest.raises(structures.CocoFormatError, match='annotation id 11: bbox must be 4'):
    coco.load_coco(path, image_dir, filter_empty=False)


@pytest.mark.parametrize('field, value, message', [
    ('category_id', 4, 'unknown category id 4'),
    ('image_id', 8, 'unknown image id 8'),
    ('id', 10, 'duplicate annotation id'),
])
def test_unknown_ids(tmp_path, field, value, message):
  path, image_dir, data = _write(tmp_path)
  data['annotations'][2][field] = value
  path, image_dir, _ = _write(tmp_path, annotations=data['annotations'])
  with pytest.raises(structures.CocoFormatError, match=rf'ann\.json: annotation id \d+: {message}'):
    coco.load_coco(path, image_dir, filter_empty=False)


def test_real_coco_slice(coco_tiny):
  annotation_file = str(coco_tiny / 'annotations' / 'instances_val2017.json')
  dataset = coco.load_coco(annotation_file, str(coco_tiny / 'val2017'), filter_empty=False)
  assert len(dataset) == 50 and dataset.num_classes == 80
  assert sum(r.num_instances for r in dataset.records) == 382
  assert sum(int(r.is_crowd.sum()) for r in dataset.records) == 5
  assert sum(r.num_instances == 0 for r in dataset.records) == 2
  assert not any(dataset.skipped.values())
  assert len(coco.load_coco(annotation_file, str(coco_tiny / 'val2017'),
                            filter_empty=True)) == 48

  reference = coco_api.COCO(annotation_file)
  decoded_area = annotated_area = 0.0
  for record in dataset.records[::5]:
    image = image_files.read_image(record)
    assert image.shape == (record.height, record.width, 3)
    masks = mask_decoding.decode_masks(record)
    for mask, ann_id, crowd in zip(masks, record.annotation_ids, record.is_crowd):
      ann = reference.anns[int(ann_id)]
      np.testing.assert_array_equal(mask, reference.annToMask(ann))
      assert dataset.category_ids[record.classes[list(record.annotation_ids).index(ann_id)]
                                  - 1] == ann['category_id']
      if not crowd:
        decoded_area += mask.sum()
        annotated_area += ann['area']
  # COCO's `area` is the polygon's area; the rasterized masks agree in total.
  assert decoded_area == pytest.approx(annotated_area, rel=0.01)


def test_num_classes_must_be_the_number_of_categories():
  ids = (1, 3, 7)
  assert coco.check_num_classes(3, ids, 'ann.json') == ids
  for wrong in (2, 7, 8):  # fewer: classes past the classifier; more: read as ids
    with pytest.raises(ValueError, match=rf'num_classes = {wrong} but ann\.json has 3 '
                                         r'categories.*num_classes=3'):
      coco.check_num_classes(wrong, ids, 'ann.json')
  # Inference also accepts torchvision's labels-are-category-ids models, exactly.
  assert coco.check_num_classes(7, ids, 'ann.json', labels_may_be_ids=True) == tuple(
      range(1, 8))
  with pytest.raises(ValueError, match='or 7, its largest category id'):
    coco.check_num_classes(8, ids, 'ann.json', labels_may_be_ids=True)


def test_read_categories_sorts_by_id(tmp_path):
  path, _, _ = _write(tmp_path)
  assert coco.read_categories(path) == ((3, 5), ('three', 'five'))


@pytest.mark.parametrize('field', ['area', 'iscrowd'])
def test_evaluation_needs_area_and_iscrowd(tmp_path, field):
  path, image_dir, data = _write(tmp_path)
  for ann in data['annotations']:
    ann['area'] = 1.0
  path, image_dir, _ = _write(tmp_path, annotations=data['annotations'])
  coco.check_evaluation_fields(path)
  del data['annotations'][2][field]
  path, image_dir, _ = _write(tmp_path, annotations=data['annotations'])
  # pycocotools reads the file itself and fails only when evaluating.
  gt = coco_api.COCO(path)
  evaluator = cocoeval.COCOeval(gt, gt.loadRes([{
      'image_id': 7, 'category_id': 3, 'bbox': [0, 0, 30, 20], 'score': 1.0}]), 'bbox')
  with pytest.raises(KeyError, match=field):
    evaluator.evaluate()
  with pytest.raises(structures.CocoFormatError, match=rf'ann\.json: annotation id 12: no {field}'):
    coco.check_evaluation_fields(path)
  coco.load_coco(path, image_dir, filter_empty=False)  # training does not need them


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def test_decode_pixels_is_pillows_rgb(coco_tiny):
  """OpenCV's JPEG path and Pillow's fallbacks give Pillow's `convert('RGB')` pixels."""
  paths = sorted((coco_tiny / 'val2017').glob('*.jpg'))[:20]
  blobs = [path.read_bytes() for path in paths]
  photo = Image.open(io.BytesIO(blobs[0]))
  for orientation in (3, 6):  # "rotate 180", "rotate 90": read as stored, not rotated
    exif = Image.Exif()
    exif[0x0112] = orientation
    blobs.append(_encoded(photo, 'JPEG', exif=exif))
  blobs += [_encoded(photo.convert('L'), 'JPEG'), _encoded(photo, 'PNG'),
            _encoded(photo.convert('CMYK'), 'JPEG')]
  for blob in blobs:
    expected = np.asarray(Image.open(io.BytesIO(blob)).convert('RGB'))
    np.testing.assert_array_equal(image_files.decode_pixels(blob), expected)
  with pytest.raises(OSError, match='truncated'):
    image_files.decode_pixels(blobs[0][:len(blobs[0]) // 2])
