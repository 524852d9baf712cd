"""Image files to RGB pixels (host side): what the input pipeline and the scripts decode.

Every image becomes [height, width, 3] uint8 RGB. 16-bit images (PIL modes 'I;16*', 'I'
holding values up to 65535, 16-bit PNGs of any color type) are scaled to 8 bits as
value * 255 / 65535 rounded (65535 -> 255, 257 -> 1), gray repeated into R, G and B;
images without an 8-bit scale (float 'F', 32-bit integers) are refused.

Training reads the pixels in their stored order, the EXIF orientation tag ignored:
COCO's annotations (their boxes, masks and the image width / height) are in stored
pixel coordinates, as pycocotools and the COCO annotation tools read images. Photos
meant to be viewed upright (`scripts/predict.py`) apply the tag, as Detectron2's
`read_image` does: `read_image_file(path, exif_orientation=True)`.
"""

import io
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from maskrcnn_jax.data import structures

# OpenCV's own flags: RGB out (where this OpenCV has it), and EXIF orientation left as
# stored, as Pillow reads it.
_CV2_RGB = getattr(cv2, 'IMREAD_COLOR_RGB', None)
_CV2_FLAGS = ((cv2.IMREAD_COLOR if _CV2_RGB is None else _CV2_RGB)
              | cv2.IMREAD_IGNORE_ORIENTATION)

_SIXTEEN_BIT_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N')
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
EXIF_ORIENTATION_TAG = 0x0112

# EXIF orientation -> the view of the stored [height, width, 3] pixels that shows the
# image upright (the transpose `PIL.ImageOps.exif_transpose` applies for each value).
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda p: p[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda p: p[::-1, ::-1],  # ROTATE_180
    4: lambda p: p[::-1],  # FLIP_TOP_BOTTOM
    5: lambda p: p.transpose(1, 0, 2),  # TRANSPOSE
    6: lambda p: p.transpose(1, 0, 2)[:, ::-1],  # ROTATE_270: 90 degrees clockwise
    7: lambda p: p[::-1, ::-1].transpose(1, 0, 2),  # TRANSVERSE
    8: lambda p: p.transpose(1, 0, 2)[::-1],  # ROTATE_90: 90 degrees counter-clockwise
}


def _is_16_bit_png(data: bytes) -> bool:
  """Whether `data` is a PNG of 16 bits per sample (its IHDR chunk, always the first)."""
  return data[:8] == _PNG_SIGNATURE and data[12:16] == b'IHDR' and data[24:25] == b'\x10'


def _to_8_bit(values: np.ndarray) -> np.ndarray:
  """16-bit values -> uint8 round(value * 255 / 65535), same shape.

  value * 255 / 65535 = value / 257, which is never halfway between integers.
  """
  return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _stored_pixels(image: Image.Image, data: bytes) -> np.ndarray:
  """[height, width, 3] uint8 RGB of an opened image, in stored pixel order."""
  if (image.format == 'JPEG' and image.mode in ('RGB', 'L')
      and data.rstrip(b'\0').endswith(b'\xff\xd9')):
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _CV2_FLAGS)
    if pixels is not None and pixels.shape[:2] == image.size[::-1]:
      return pixels if _CV2_RGB is not None else pixels[..., ::-1].copy()
  if _is_16_bit_png(data):
    # Pillow keeps only the high byte of 16-bit color PNGs; OpenCV gives all 16 bits
    # (gray repeated, alpha dropped, as Pillow's convert('RGB')).
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _CV2_FLAGS | cv2.IMREAD_ANYDEPTH)
    if (pixels is not None and pixels.dtype == np.uint16
        and pixels.shape == (*image.size[::-1], 3)):
      return _to_8_bit(pixels if _CV2_RGB is not None else pixels[..., ::-1])
  if image.mode in _SIXTEEN_BIT_MODES or image.mode == 'I':
    values = np.asarray(image)
    if image.mode == 'I' and values.size and (values.min() < 0 or values.max() > 65535):
      raise ValueError(f"mode 'I' with values in [{values.min()}, {values.max()}], past "
                       '16 bits, has no 8-bit scale; save it as an 8- or 16-bit image')
    return np.repeat(_to_8_bit(values)[..., None], 3, axis=2)
  if image.mode == 'F' or image.mode.startswith('I'):
    raise ValueError(f"mode '{image.mode}' (float or 32-bit pixels) has no 8-bit scale; "
                     'save it as an 8- or 16-bit image')
  return np.asarray(image if image.mode == 'RGB' else image.convert('RGB'))


def _orientation(image: Image.Image) -> int:
  value = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
  return value if isinstance(value, int) else 1  # a malformed tag: as stored, as Pillow


def orientation_tag(data: bytes) -> int:
  """The EXIF orientation tag of an encoded image (1..8; 1, upright, when absent)."""
  with Image.open(io.BytesIO(data)) as image:
    return _orientation(image)


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
  """Stored [height, width, 3] pixels -> the upright view for an EXIF orientation tag.

  The same pixels as `PIL.ImageOps.exif_transpose`; orientations 5..8 swap height and
  width; values outside 2..8 leave the pixels as stored.
  """
  transform = _UPRIGHT.get(orientation)
  return pixels if transform is None else np.ascontiguousarray(transform(pixels))


def decode_pixels(data: bytes, exif_orientation: bool = False) -> np.ndarray:
  """An encoded image -> [height, width, 3] uint8 RGB, as Pillow's `convert('RGB')`.

  A complete (ends in its EOI marker) RGB or grayscale JPEG is decoded by OpenCV: the
  same libjpeg-turbo pixels, without Pillow's copies. 16-bit images are scaled to 8 bits
  (the module docstring; 16-bit PNGs through OpenCV, which keeps their 16 bits). Anything
  else (other formats, CMYK, a truncated file) goes through Pillow, which raises on what
  it cannot decode; modes without an 8-bit scale raise ValueError.

  Args:
    data: the file's bytes.
    exif_orientation: apply the EXIF orientation tag (`upright`); False keeps the
      stored pixel order, the frame of COCO annotations (training, evaluation).
  """
  with Image.open(io.BytesIO(data)) as image:
    pixels = _stored_pixels(image, data)
    if exif_orientation:
      pixels = upright(pixels, _orientation(image))
  return pixels


def is_16_bit(data: bytes) -> bool:
  """Whether an encoded image has 16-bit samples (`decode_pixels` scales them to 8 bits)."""
  if _is_16_bit_png(data):
    return True
  with Image.open(io.BytesIO(data)) as image:
    return image.mode in _SIXTEEN_BIT_MODES or image.mode == 'I'


def read_image_file(path: str, exif_orientation: bool) -> np.ndarray:
  """An image file -> [height, width, 3] uint8 RGB (`decode_pixels`, 16-bit scaling too).

  Args:
    path: the image file.
    exif_orientation: apply the EXIF orientation tag (all 8 values, as
      `PIL.ImageOps.exif_transpose` and Detectron2's `read_image`): True for photos meant
      to be viewed upright (scripts/predict.py); False gives the stored pixel order,
      the frame of COCO annotations (training reads images so, `read_image`).

  Raises:
    structures.ImageReadError: one line naming the file, when it is missing or cannot
      be decoded (or has no 8-bit scale).
  """
  try:
    with open(path, 'rb') as f:
      data = f.read()
    return decode_pixels(data, exif_orientation)
  except FileNotFoundError as e:
    raise structures.ImageReadError(f'{path}: no such image file') from e
  except (OSError, SyntaxError, ValueError) as e:
    raise structures.ImageReadError(f'{path}: cannot decode: {e}') from e


def read_image(record: structures.ImageRecord) -> np.ndarray:
  """Decodes a record's image as RGB: [height, width, 3] uint8, 16-bit images scaled.

  Stored pixel order (no EXIF rotation): the frame of the record's boxes and masks.
  """
  try:
    if record.image_bytes is None:
      with open(record.path, 'rb') as f:
        data = f.read()
    else:
      data = record.image_bytes
    pixels = decode_pixels(data)
  except FileNotFoundError as e:
    raise structures.ImageReadError(
        f'{record.source}: image id {record.image_id}: missing image {record.path}') from e
  except (OSError, SyntaxError, ValueError) as e:
    raise structures.ImageReadError(
        f'{record.source}: image id {record.image_id}: cannot decode {record.path}: {e}'
    ) from e
  if pixels.shape[:2] != (record.height, record.width):
    raise structures.ImageReadError(
        f'{record.source}: image id {record.image_id}: {record.path} is '
        f'{pixels.shape[0]} x {pixels.shape[1]}, the annotation file says '
        f'{record.height} x {record.width}')
  return pixels
