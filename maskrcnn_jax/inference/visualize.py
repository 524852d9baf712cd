"""Drawing detections on an image (host side, PIL)."""

import numpy as np
from PIL import Image
from PIL import ImageDraw


def _colour(category: int) -> tuple[int, int, int]:
  rng = np.random.default_rng(category)
  return tuple(int(v) for v in rng.integers(64, 256, size=3))


def draw_detections(image: np.ndarray, detections: dict, names: dict,
                    min_score: float) -> Image.Image:
  """Masks blended at 50%, boxes and 'name score' labels for scores >= min_score.

  Args:
    image: [H, W, 3] uint8 RGB.
    detections: a Predictor result: boxes [n, 4], scores [n], classes [n], masks [n, H, W]
      (optional), keypoints [n, K, 3] (optional, drawn as dots).
    names: category id -> name; ids without a name are drawn as numbers.
    min_score: detections scoring lower are not drawn.
  """
  canvas = image.astype(np.float32)
  keep = np.flatnonzero(detections['scores'] >= min_score)
  for i in keep if 'masks' in detections else ():
    mask = detections['masks'][i]
    canvas[mask] = 0.5 * canvas[mask] + 0.5 * np.array(_colour(int(detections['classes'][i])))
  picture = Image.fromarray(canvas.astype(np.uint8))
  pen = ImageDraw.Draw(picture)
  for i in keep:
    category = int(detections['classes'][i])
    x1, y1, x2, y2 = (float(v) for v in detections['boxes'][i])
    pen.rectangle([x1, y1, x2, y2], outline=_colour(category), width=2)
    label = f"{names.get(category, category)} {detections['scores'][i]:.2f}"
    pen.text((x1 + 2, y1 + 1), label, fill=(255, 255, 255))
    for x, y, _ in detections['keypoints'][i] if 'keypoints' in detections else ():
      pen.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(255, 32, 32), outline=(255, 255, 255))
  return picture
