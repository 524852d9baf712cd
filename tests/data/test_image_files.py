"""Tests of data/image_files.py: 16-bit images scaled to 8 bits, EXIF orientation applied."""

import cv2
import numpy as np
from PIL import Image
from PIL import ImageOps
import pytest

from maskrcnn_jax.data import image_files
from maskrcnn_jax.data import structures

# Every 16-bit value an 8-bit scale could round the wrong way, and the ends.
_VALUES = np.array([0, 1, 128, 129, 257, 385, 386, 32767, 32768, 65278, 65279, 65535])


def _sixteen_bit_values(seed: int = 0) -> np.ndarray:
  """[4, 6] uint16: the values above, then random ones."""
  rng = np.random.default_rng(seed)
  return np.concatenate([_VALUES, rng.integers(0, 65536, 12)]).reshape(4, 6).astype(np.uint16)


def _expected_8_bit(values: np.ndarray) -> np.ndarray:
  """The definition: value * 255 / 65535, rounded."""
  return np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)


def _record(path, height, width) -> structures.ImageRecord:
  return structures.ImageRecord(
      image_id=1, path=str(path), height=height, width=width,
      annotation_ids=np.zeros(0, np.int64), boxes=np.zeros((0, 4), np.float32),
      classes=np.zeros(0, np.int32), is_crowd=np.zeros(0, bool), segmentations=(),
      source='ann.json')


@pytest.mark.parametrize('name, dtype, mode', [
    ('gray.png', '<u2', 'I;16'),  # a 16-bit PNG (read through OpenCV)
    ('gray.tif', '<u2', 'I;16'),  # the others through Pillow
    ('gray.tif', '>u2', 'I;16B'),
    ('gray.tif', 'int32', 'I'),  # 32-bit integers holding 16-bit values
])
def test_16_bit_gray_is_scaled_to_8_bits_and_repeated(tmp_path, name, dtype, mode):
  values = _sixteen_bit_values()
  path = tmp_path / name
  Image.fromarray(values.astype(dtype)).save(path)
  with Image.open(path) as image:
    assert image.mode == mode
  assert image_files.is_16_bit(path.read_bytes())
  expected = np.repeat(_expected_8_bit(values)[..., None], 3, axis=2)
  assert expected[0, :5, 0].tolist() == [0, 0, 0, 1, 1] and expected[1, 5, 0] == 255
  np.testing.assert_array_equal(image_files.read_image(_record(path, 4, 6)), expected)
  np.testing.assert_array_equal(image_files.read_image_file(str(path), False), expected)


@pytest.mark.parametrize('channels', [3, 4])
def test_16_bit_color_png_is_scaled_to_8_bits(tmp_path, channels):
  rgb = np.stack([_sixteen_bit_values(seed) for seed in range(channels)], axis=-1)
  path = tmp_path / 'color.png'
  bgr = rgb[..., [2, 1, 0, 3][:channels]]  # OpenCV writes BGR(A)
  assert cv2.imwrite(str(path), np.ascontiguousarray(bgr))
  assert image_files.is_16_bit(path.read_bytes())
  # Alpha dropped, as Pillow's convert('RGB'); Pillow itself keeps only the high byte.
  np.testing.assert_array_equal(image_files.read_image_file(str(path), False),
                                _expected_8_bit(rgb[..., :3]))


def test_8_bit_images_are_not_16_bit(tmp_path):
  path = tmp_path / 'rgb.png'
  Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(path)
  assert not image_files.is_16_bit(path.read_bytes())


@pytest.mark.parametrize('pixels, message', [
    (np.ones((4, 6), np.float32), "mode 'F'"),
    (np.full((4, 6), 70000, np.int32), r"mode 'I' with values in \[70000, 70000\], past 16"),
])
def test_images_without_an_8_bit_scale_are_refused_naming_the_file(tmp_path, pixels, message):
  path = tmp_path / 'odd.tif'
  Image.fromarray(pixels).save(path)
  with pytest.raises(structures.ImageReadError,
                     match=rf'^{path}: cannot decode: {message}[^\n]*$'):
    image_files.read_image_file(str(path), False)
  with pytest.raises(structures.ImageReadError,
                     match=rf'^ann\.json: image id 1: cannot decode {path}: {message}'):
    image_files.read_image(_record(path, 4, 6))


# The EXIF orientation tag: where the stored row 0 / column 0 are seen, and the view of
# the stored pixels that shows the image upright.
_EXIF_UPRIGHT = {
    1: lambda a: a,  # top / left
    2: np.fliplr,  # top / right
    3: lambda a: np.rot90(a, 2),  # bottom / right
    4: np.flipud,  # bottom / left
    5: lambda a: np.rot90(np.flipud(a), -1),  # left / top
    6: lambda a: np.rot90(a, -1),  # right / top: turned 90 degrees clockwise
    7: lambda a: np.rot90(np.flipud(a), 1),  # right / bottom
    8: lambda a: np.rot90(a, 1),  # left / bottom: 90 degrees counter-clockwise
}


def _with_orientation(path, pixels, orientation, **kwargs):
  exif = Image.Exif()
  exif[image_files.EXIF_ORIENTATION_TAG] = orientation
  Image.fromarray(pixels).save(path, exif=exif, **kwargs)


@pytest.mark.parametrize('orientation', range(1, 9))
def test_exif_orientation_is_applied_only_when_asked(tmp_path, orientation):
  stored = np.random.default_rng(orientation).integers(0, 256, (3, 5, 3), np.uint8)
  path = tmp_path / 'photo.png'
  _with_orientation(path, stored, orientation)
  assert image_files.orientation_tag(path.read_bytes()) == orientation
  upright = image_files.read_image_file(str(path), exif_orientation=True)
  np.testing.assert_array_equal(upright, _EXIF_UPRIGHT[orientation](stored))
  with Image.open(path) as image:
    np.testing.assert_array_equal(upright, np.asarray(ImageOps.exif_transpose(image)))
  # Stored pixel order otherwise, and always for training (the annotations' frame).
  np.testing.assert_array_equal(image_files.read_image_file(str(path), False), stored)
  np.testing.assert_array_equal(image_files.read_image(_record(path, 3, 5)), stored)

  # JPEGs (OpenCV's path): the same view of the pixels read as stored.
  jpeg = tmp_path / 'photo.jpg'
  _with_orientation(jpeg, np.kron(stored, np.ones((8, 8, 1), np.uint8)), orientation,
                    quality=95)
  as_stored = image_files.read_image_file(str(jpeg), False)
  assert as_stored.shape == (24, 40, 3)
  np.testing.assert_array_equal(image_files.read_image_file(str(jpeg), True),
                                _EXIF_UPRIGHT[orientation](as_stored))


def test_exif_orientation_of_16_bit_images(tmp_path):
  values = _sixteen_bit_values()
  path = tmp_path / 'gray.png'
  _with_orientation(path, values, 6)
  np.testing.assert_array_equal(
      image_files.read_image_file(str(path), True),
      np.rot90(np.repeat(_expected_8_bit(values)[..., None], 3, axis=2), -1))


def test_a_missing_file_is_named(tmp_path):
  with pytest.raises(structures.ImageReadError, match=rf'^{tmp_path}/gone.png: no such image'):
    image_files.read_image_file(str(tmp_path / 'gone.png'), True)
