"""scripts/visualize_data.py, run as a user runs it: ground truth drawn into PNGs."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from maskrcnn_jax.inference import visualize
from tests.conftest import REPO_ROOT

HEIGHT, WIDTH = 48, 64
SCALE = visualize.drawing_scale(HEIGHT, WIDTH)  # 11: the shorter side to 528 pixels


def _run(*args):
  return subprocess.run([sys.executable, str(REPO_ROOT / 'scripts' / 'visualize_data.py'),
                         *map(str, args)], cwd=REPO_ROOT, capture_output=True, text=True,
                        timeout=120, env=dict(os.environ, JAX_PLATFORMS='cpu'))


def _mask(rows, columns):
  mask = np.zeros((HEIGHT, WIDTH), np.uint8)
  mask[rows, columns] = 1
  return mask


def _uncompressed_rle(mask):
  """COCO's uncompressed RLE: column-major runs, starting with zeros."""
  flat = mask.ravel(order='F')
  bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
  runs = np.diff(bounds).tolist()
  return {'size': [HEIGHT, WIDTH], 'counts': runs if flat[0] == 0 else [0] + runs}


def _hand_made_dataset(root):
  """Two grey images: a dog polygon and a kite compressed RLE; a crowd of dogs in
  uncompressed RLE and a kite polygon. Categories 5 'dog' and 9 'kite' (classes 1, 2)."""
  (root / 'images').mkdir(parents=True)
  for image_id, level in ((1, 100), (2, 60)):
    Image.fromarray(np.full((HEIGHT, WIDTH, 3), level, np.uint8)).save(
        root / 'images' / f'{image_id}.png')
  kite = mask_util.encode(np.asfortranarray(_mask(slice(35, 45), slice(40, 60))))
  annotations = [
      (1, 5, [10, 10, 20, 20], [[10, 10, 30, 10, 30, 30, 10, 30]], 0),
      (1, 9, [40, 35, 20, 10], {'size': [HEIGHT, WIDTH],
                                'counts': kite['counts'].decode('ascii')}, 0),
      (2, 5, [5, 5, 35, 16], _uncompressed_rle(_mask(slice(5, 21), slice(5, 40))), 1),
      (2, 9, [40, 30, 20, 14], [[40, 30, 60, 30, 60, 44, 40, 44]], 0),
  ]
  data = {'images': [{'id': i, 'file_name': f'{i}.png', 'height': HEIGHT, 'width': WIDTH}
                     for i in (1, 2)],
          'categories': [{'id': 5, 'name': 'dog'}, {'id': 9, 'name': 'kite'}],
          'annotations': [{'id': k + 1, 'image_id': image_id, 'category_id': category,
                           'bbox': box, 'area': box[2] * box[3], 'segmentation': segmentation,
                           'iscrowd': crowd}
                          for k, (image_id, category, box, segmentation, crowd)
                          in enumerate(annotations)]}
  path = root / 'instances.json'
  path.write_text(json.dumps(data))
  return path, root / 'images'


def _pixel(drawing, row, column):
  """The drawing's pixel in the middle of the original pixel (row, column)."""
  return drawing[row * SCALE + SCALE // 2, column * SCALE + SCALE // 2]


def _blend(level, colour):
  return (0.5 * level + 0.5 * np.array(colour, np.float32)).astype(np.uint8)


def test_draws_polygons_rle_and_crowd_regions_of_a_hand_made_dataset(tmp_path):
  annotations, images = _hand_made_dataset(tmp_path / 'data')
  result = _run(f'--annotations={annotations}', f'--images={images}',
                f'--out={tmp_path / "out"}', '--num=5')
  assert result.returncode == 0, result.stderr[-2000:]
  assert f'drew 2 images (4 instances, 1 crowd) into {tmp_path / "out"}' in result.stdout
  assert sorted(os.listdir(tmp_path / 'out')) == ['1.png', '2.png']
  first = np.asarray(Image.open(tmp_path / 'out' / '1.png').convert('RGB'))
  second = np.asarray(Image.open(tmp_path / 'out' / '2.png').convert('RGB'))
  assert first.shape == second.shape == (HEIGHT * SCALE, WIDTH * SCALE, 3)
  dog, kite = visualize._colour(1), visualize._colour(2)  # pylint: disable=protected-access
  np.testing.assert_array_equal(_pixel(first, 20, 20), _blend(100, dog))  # polygon
  np.testing.assert_array_equal(_pixel(first, 40, 50), _blend(100, kite))  # compressed RLE
  np.testing.assert_array_equal(_pixel(first, 5, 50), [100, 100, 100])  # no instance
  np.testing.assert_array_equal(_pixel(second, 13, 20), _blend(60, (160, 160, 160)))  # crowd
  np.testing.assert_array_equal(_pixel(second, 40, 50), _blend(60, kite))
  # Each instance has a name tag in its colour, halved (the crowd's grey).
  for drawing, colours in ((first, (dog, kite)), (second, ((160, 160, 160), kite))):
    for colour in colours:
      assert np.any(np.all(drawing == np.array(colour) // 2, axis=-1)), colour


def test_reads_the_config_split(tmp_path):
  annotations, images = _hand_made_dataset(tmp_path / 'data')
  result = _run(f'--config={REPO_ROOT / "configs" / "tiny.py"}', '--split=val',
                f'--config.data.val_annotations={annotations}',
                f'--config.data.val_images={images}', f'--out={tmp_path / "out"}', '--num=1')
  assert result.returncode == 0, result.stderr[-2000:]
  assert os.listdir(tmp_path / 'out') == ['1.png']


def test_draws_the_first_images_of_the_real_coco_slice(coco_tiny, tmp_path):
  annotations = coco_tiny / 'annotations' / 'instances_val2017.json'
  result = _run(f'--annotations={annotations}', f'--images={coco_tiny / "val2017"}',
                f'--out={tmp_path / "out"}', '--num=3')
  assert result.returncode == 0, result.stderr[-2000:]
  data = json.loads(annotations.read_text())
  for image in data['images'][:3]:
    drawing = Image.open(tmp_path / 'out' / f'{image["id"]}.png')
    scale = visualize.drawing_scale(image['height'], image['width'])
    assert drawing.size == (image['width'] * scale, image['height'] * scale)
    original = Image.open(coco_tiny / 'val2017' / image['file_name']).convert('RGB')
    enlarged = np.asarray(original.resize(drawing.size, Image.NEAREST), np.int16)
    changed = np.any(np.asarray(drawing.convert('RGB'), np.int16) != enlarged, axis=-1)
    for annotation in data['annotations']:
      if annotation['image_id'] == image['id']:  # drawn over: its box's middle row
        x, y, w, h = (round(v * scale) for v in annotation['bbox'])
        assert changed[y + h // 2, x:x + w + 1].any(), annotation['id']


def test_mistakes_are_one_line(tmp_path):
  result = _run(f'--out={tmp_path / "out"}', '--annotations=/nowhere/instances.json',
                f'--images={tmp_path}')
  assert result.returncode == 1
  assert result.stderr.splitlines()[0] == (
      'visualize_data.py: error: /nowhere/instances.json: annotation file not found')
  result = _run(f'--out={tmp_path / "out"}')
  assert result.returncode == 2
  assert result.stderr.splitlines()[0] == ('visualize_data.py: error: give --annotations and '
                                           '--images, or --config (and --split)')
  assert not (tmp_path / 'out').exists()
