"""Image files to RGB pixels (host side): what the input pipeline and the scripts decode."""

import io

import cv2
import numpy as np
from PIL import Image

from maskrcnn_jax.data import structures

# OpenCV's own flags: RGB out (where this OpenCV has it), and EXIF orientation left as
# stored, as Pillow reads it.
_CV2_RGB = getattr(cv2, 'IMREAD_COLOR_RGB', None)
_CV2_FLAGS = ((cv2.IMREAD_COLOR if _CV2_RGB is None else _CV2_RGB)
              | cv2.IMREAD_IGNORE_ORIENTATION)


def decode_pixels(data: bytes) -> np.ndarray:
  """An encoded image -> [height, width, 3] uint8 RGB, as Pillow's `convert('RGB')`.

  A complete (ends in its EOI marker) RGB or grayscale JPEG is decoded by OpenCV: the
  same libjpeg-turbo pixels, without Pillow's copies. Anything else (other formats, CMYK,
  a truncated file) goes through Pillow, which raises on what it cannot decode.
  """
  with Image.open(io.BytesIO(data)) as image:
    if (image.format == 'JPEG' and image.mode in ('RGB', 'L')
        and data.rstrip(b'\0').endswith(b'\xff\xd9')):
      pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _CV2_FLAGS)
      if pixels is not None and pixels.shape[:2] == image.size[::-1]:
        return pixels if _CV2_RGB is not None else pixels[..., ::-1].copy()
    return np.asarray(image if image.mode == 'RGB' else image.convert('RGB'))


def read_image(record: structures.ImageRecord) -> np.ndarray:
  """Decodes a record's image as RGB: [height, width, 3] uint8 (no EXIF rotation)."""
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
