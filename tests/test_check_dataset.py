"""scripts/check_dataset.py on a generated COCO folder with planted problems."""

import io
import json
import subprocess
import sys

import numpy as np
from PIL import Image

from maskrcnn_jax.data import coco
from maskrcnn_jax.data import coco_check
from maskrcnn_jax.data import image_files
from maskrcnn_jax.data import shapes
from tests.conftest import REPO_ROOT


def _planted(tmp_path):
  """Four 20 x 30 images and six annotations, with one of each problem (two of some)."""
  image_dir = tmp_path / 'images'
  image_dir.mkdir()
  png = io.BytesIO()
  Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(png, format='PNG')
  (image_dir / 'a.png').write_bytes(png.getvalue())
  (image_dir / 'b.png').write_bytes(png.getvalue()[:len(png.getvalue()) // 2])  # truncated
  (image_dir / 'c.png').write_bytes(png.getvalue())  # the file says 21 rows
  images = [{'id': i, 'file_name': name, 'height': 21 if name == 'c.png' else 20, 'width': 30}
            for i, name in enumerate(('a.png', 'b.png', 'c.png', 'd.png'), 1)]  # d: no file
  square = [[2, 3, 10, 3, 10, 9, 2, 9]]

  def ann(ann_id, **fields):
    return dict({'id': ann_id, 'image_id': 1, 'category_id': 1, 'bbox': [2, 3, 8, 6],
                 'segmentation': square, 'iscrowd': 0, 'area': 48.0}, **fields)

  annotations = [ann(10), ann(11), ann(12, bbox=[5, 5, 0, 4]),
                 ann(13, segmentation=[[1, 2, 3, 4, 5, 6, 7]]),
                 ann(14, segmentation={'counts': [45, 10, 500], 'size': [20, 30]}),
                 ann(15, category_id=99)]
  del annotations[1]['area']
  path = tmp_path / 'ann.json'
  path.write_text(json.dumps({'images': images, 'annotations': annotations,
                              'categories': [{'id': 1, 'name': 'thing'}]}))
  return str(path), str(image_dir)


def test_every_planted_problem_is_counted(tmp_path):
  found = coco_check.check_coco(*_planted(tmp_path), workers=2)
  assert {k: len(v) for k, v in found.items()} == {
      'missing_fields': 1, 'unknown_ids': 1, 'degenerate_box': 1, 'bad_segmentation': 2,
      'unreadable_image': 2, 'size_mismatch': 1, 'no_segmentation': 0, 'sixteen_bit': 0,
      'exif_orientation': 0}
  assert coco_check.num_problems(found) == 8
  assert found['missing_fields'] == ['annotation id 11: no area']
  assert found['unknown_ids'] == ['annotation id 15: unknown category id 99']
  assert found['degenerate_box'][0].startswith('annotation id 12: ')
  assert sorted(d.split(':')[0] for d in found['bad_segmentation']) == [
      'annotation id 13', 'annotation id 14']
  assert 'odd number of coordinates' in found['bad_segmentation'][0]
  assert 'RLE counts sum' in found['bad_segmentation'][1]
  assert [d.split(':')[0] for d in found['unreadable_image']] == ['image id 2', 'image id 4']
  assert found['size_mismatch'] == [
      f'image id 3: {tmp_path}/images/c.png is 20 x 30, the annotation file says 21 x 30']


def test_script_exits_1_on_problems_and_0_on_a_clean_dataset(tmp_path):
  script = [sys.executable, str(REPO_ROOT / 'scripts' / 'check_dataset.py'), '--workers=2']
  path, image_dir = _planted(tmp_path)
  result = subprocess.run(script + [f'--annotations={path}', f'--images={image_dir}'],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1, result.stderr[-2000:]
  assert 'bad_segmentation: 2\n' in result.stdout and f'{path}: 8 problems' in result.stdout

  path, image_dir = shapes.write_split(str(tmp_path / 'shapes'), 'val', 6, 48, seed=0)
  coco.load_coco(path, image_dir, filter_empty=False)  # what training reads without error
  result = subprocess.run(script + ['--config=configs/tiny.py', '--split=val',
                                    f'--config.data.val_annotations={path}',
                                    f'--config.data.val_images={image_dir}'],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr[-2000:]
  assert f'{path}: 0 problems' in result.stdout


def test_the_real_coco_slice_has_no_problem(coco_tiny):
  found = coco_check.check_coco(str(coco_tiny / 'annotations' / 'instances_val2017.json'),
                                str(coco_tiny / 'val2017'), workers=2)
  assert found == {key: [] for key in coco_check.PROBLEMS + tuple(coco_check.NOTICES)}


def test_box_only_16_bit_and_rotated_images_are_notices_not_problems(tmp_path):
  """Training reads them: check_dataset names them (count, first few) and exits 0."""
  image_dir = tmp_path / 'images'
  image_dir.mkdir()
  exif = Image.Exif()
  exif[image_files.EXIF_ORIENTATION_TAG] = 6
  Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image_dir / 'a.png')
  Image.fromarray(np.full((20, 30), 40000, np.uint16)).save(image_dir / 'b.png')  # 16-bit
  Image.fromarray(np.full((20, 30), 300, np.uint16)).save(image_dir / 'c.tif')  # 16-bit
  Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image_dir / 'd.jpg', exif=exif)
  Image.fromarray(np.ones((20, 30), np.float32)).save(image_dir / 'e.tif')  # no 8-bit scale
  names = ('a.png', 'b.png', 'c.tif', 'd.jpg', 'e.tif')
  images = [{'id': i, 'file_name': name, 'height': 20, 'width': 30}
            for i, name in enumerate(names, 1)]
  annotations = [{'id': 10 + i, 'image_id': 1, 'category_id': 1, 'bbox': [2, 3, 8, 6],
                  'iscrowd': 0, 'area': 48.0} for i in range(4)]
  annotations[0]['segmentation'] = [[2, 3, 10, 3, 10, 9, 2, 9]]
  annotations[1]['segmentation'] = []  # no segmentation, as no key, for Detectron2
  annotations[2]['segmentation'] = None
  path = tmp_path / 'ann.json'
  path.write_text(json.dumps({'images': images, 'annotations': annotations,
                              'categories': [{'id': 1, 'name': 'thing'}]}))

  found = coco_check.check_coco(str(path), str(image_dir), workers=2)
  assert found['no_segmentation'] == ['annotation id 11', 'annotation id 12',
                                      'annotation id 13']
  assert found['sixteen_bit'] == [f'image id 2: {image_dir}/b.png',
                                  f'image id 3: {image_dir}/c.tif']
  assert found['exif_orientation'] == [f'image id 4: {image_dir}/d.jpg: orientation 6']
  assert [d.split(': ')[0] for d in found['unreadable_image']] == ['image id 5']
  assert "mode 'F'" in found['unreadable_image'][0]  # what training would refuse
  assert coco_check.num_problems(found) == 1

  script = [sys.executable, str(REPO_ROOT / 'scripts' / 'check_dataset.py'), '--workers=2',
            f'--annotations={path}', f'--images={image_dir}', '--shown=2']
  (image_dir / 'e.tif').unlink()
  images.pop()
  path.write_text(json.dumps({'images': images, 'annotations': annotations,
                              'categories': [{'id': 1, 'name': 'thing'}]}))
  result = subprocess.run(script, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr[-2000:]
  assert f'{path}: 0 problems, 6 notices' in result.stdout
  notices = result.stdout.split('notices (training reads these; not errors):\n')[1]
  assert notices.startswith(
      'no_segmentation: 3 (annotations without segmentation: box-only instances, trained '
      'with --config.model.mask_head.enabled=False)\n'
      '  annotation id 11\n  annotation id 12\n  ... and 1 more\n'
      'sixteen_bit: 2 (16-bit images: scaled to 8 bits (value * 255 / 65535) when read)\n'
      f'  image id 2: {image_dir}/b.png\n  image id 3: {image_dir}/c.tif\n'
      'exif_orientation: 1 (images whose EXIF orientation is not 1: annotations are read in '
      'stored pixel order (the tag ignored))\n'
      f'  image id 4: {image_dir}/d.jpg: orientation 6\n'), notices
  # Training reads the same file: the box-only annotations load as such.
  dataset = coco.load_coco(str(path), str(image_dir), filter_empty=False)
  assert dataset.num_without_segmentation == 3
