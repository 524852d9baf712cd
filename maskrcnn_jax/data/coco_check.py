"""Every problem of a COCO-format dataset at once, counted (scripts/check_dataset.py).

`load_coco` stops at the first error and training meets image errors only when it reads
the image; this reads the whole file, decodes every image and mask once (in worker
processes) and counts each problem:
  - `missing_fields`: an annotation without id, image_id, category_id, bbox, iscrowd or
    area (COCO evaluation needs the last two);
  - `unknown_ids`: an unknown image or category id, or a duplicate id;
  - `degenerate_box`: a malformed bbox, or one without area inside the image;
  - `bad_segmentation`: a malformed segmentation, one with no polygon of 3 points, or
    one that does not decode;
  - `unreadable_image`: a missing or undecodable image file;
  - `size_mismatch`: an image whose size is not the annotation file's.
It also counts what training reads without error but a user may not expect (`NOTICES`):
  - `no_segmentation`: annotations without a segmentation (box-only instances, trained
    with the mask head off);
  - `sixteen_bit`: 16-bit images, scaled to 8 bits when read (data/image_files.py);
  - `exif_orientation`: images whose EXIF orientation tag is not 1: their annotations
    are read in stored pixel order, the tag ignored (as pycocotools).
"""

import collections
import concurrent.futures
import multiprocessing
import os
from typing import Any

from maskrcnn_jax.data import annotation_checks
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import image_files
from maskrcnn_jax.data import mask_decoding
from maskrcnn_jax.data import structures

PROBLEMS = ('missing_fields', 'unknown_ids', 'degenerate_box', 'bad_segmentation',
            'unreadable_image', 'size_mismatch')
# What each notice means, as `summary` prints it.
NOTICES = {
    'no_segmentation': 'annotations without segmentation: box-only instances, trained '
                       'with --config.model.mask_head.enabled=False',
    'sixteen_bit': '16-bit images: scaled to 8 bits (value * 255 / 65535) when read',
    'exif_orientation': 'images whose EXIF orientation is not 1: annotations are read in '
                        'stored pixel order (the tag ignored)',
}
REQUIRED_FIELDS = ('id', 'image_id', 'category_id', 'bbox', 'iscrowd', 'area')


def _check_annotation(ann: dict[str, Any], image: dict[str, Any]) -> list[tuple[str, str]]:
  """(problem, detail) of one annotation's box and segmentation, decoding the mask."""
  problems = []
  height, width = int(image['height']), int(image['width'])
  where = f'annotation id {ann.get("id")}'
  skips = structures.Skips()
  if 'bbox' in ann:
    try:
      box = annotation_checks.check_box(ann['bbox'], height, width, where, ann.get('id'), skips)
      if box is None:
        problems.append(('degenerate_box', f'{where}: bbox {ann["bbox"]} has no area '
                                           f'inside the {width} x {height} image'))
    except structures.CocoFormatError as e:
      problems.append(('degenerate_box', str(e)))
  if not annotation_checks.has_segmentation(ann):
    problems.append(('no_segmentation', where))
  else:
    try:
      segmentation = annotation_checks.check_segmentation(ann['segmentation'], height, width, where,
                                                          ann.get('id'), skips)
      if segmentation is None:
        problems.append(('bad_segmentation', f'{where}: no polygon with 3 points'))
      else:
        mask_decoding.segmentation_to_mask(segmentation, height, width)
    except (structures.CocoFormatError, ValueError) as e:
      problems.append(('bad_segmentation', f'{where}: {e}' if where not in str(e) else str(e)))
  return problems


def _check_image(image: dict[str, Any], anns: list[dict[str, Any]], image_dir: str
                 ) -> list[tuple[str, str]]:
  """Worker task: (problem or notice, detail) of one image file and its annotations."""
  where = f'image id {image["id"]}'
  problems = []
  path = os.path.join(image_dir, str(image.get('file_name', '')))
  try:
    with open(path, 'rb') as f:
      data = f.read()
    height, width = image_files.decode_pixels(data).shape[:2]  # as training reads it
    if (height, width) != (int(image['height']), int(image['width'])):
      problems.append(('size_mismatch', f'{where}: {path} is {height} x {width}, the '
                                        f'annotation file says {image["height"]} x '
                                        f'{image["width"]}'))
    if image_files.is_16_bit(data):
      problems.append(('sixteen_bit', f'{where}: {path}'))
    orientation = image_files.orientation_tag(data)
    if orientation != 1:
      problems.append(('exif_orientation', f'{where}: {path}: orientation {orientation}'))
  except (OSError, SyntaxError, ValueError) as e:
    problems.append(('unreadable_image', f'{where}: {path}: {e}'))
  for ann in anns:
    problems += _check_annotation(ann, image)
  return problems


def check_coco(annotation_file: str, image_dir: str, workers: int = 0
               ) -> dict[str, list[str]]:
  """Every problem and notice of a COCO-format dataset: {problem: [detail, ...]} for
  `PROBLEMS` and `NOTICES`.

  Args:
    annotation_file: the JSON file; unreadable JSON or missing top-level keys raise
      CocoFormatError (nothing else can be checked).
    image_dir: the folder of the images' `file_name`s.
    workers: processes decoding images and masks; 0: one per CPU.
  """
  data = coco.load_json(annotation_file)
  found = {problem: [] for problem in PROBLEMS + tuple(NOTICES)}
  category_ids = {c.get('id') for c in data['categories']}
  images, anns_of = {}, collections.defaultdict(list)
  for image in data['images']:
    missing = [k for k in ('id', 'file_name', 'height', 'width') if k not in image]
    if missing:
      found['missing_fields'].append(f'image {image}: no {", ".join(missing)}')
    elif image['id'] in images:
      found['unknown_ids'].append(f'image id {image["id"]}: duplicate')
    else:
      images[image['id']] = image
  seen = set()
  for ann in data['annotations']:
    where = f'annotation id {ann.get("id")}'
    missing = [k for k in REQUIRED_FIELDS if k not in ann]
    if missing:
      found['missing_fields'].append(f'{where}: no {", ".join(missing)}')
    if 'id' in ann and ann['id'] in seen:
      found['unknown_ids'].append(f'{where}: duplicate')
    seen.add(ann.get('id'))
    if 'category_id' in ann and ann['category_id'] not in category_ids:
      found['unknown_ids'].append(f'{where}: unknown category id {ann["category_id"]}')
    if 'image_id' in ann and ann['image_id'] not in images:
      found['unknown_ids'].append(f'{where}: unknown image id {ann["image_id"]}')
    elif 'image_id' in ann:
      anns_of[ann['image_id']].append(ann)
  workers = workers or os.cpu_count() or 1
  ids = list(images)
  # spawn, not fork: forking a process that has started JAX's threads can deadlock.
  with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context('spawn')) as pool:
    for problems in pool.map(_check_image, [images[i] for i in ids],
                             [anns_of[i] for i in ids], [image_dir] * len(ids),
                             chunksize=max(1, len(ids) // (16 * workers))):
      for problem, detail in problems:
        found[problem].append(detail)
  return found


def num_problems(found: dict[str, list[str]]) -> int:
  """The problems of `check_coco`'s answer (its notices not counted)."""
  return sum(len(found[problem]) for problem in PROBLEMS)


def summary(found: dict[str, list[str]], shown: int = 5) -> str:
  """A line per problem, its count and its first `shown` details; then each notice found
  (not an error), with its meaning."""
  lines = []

  def add(key, meaning=''):
    details = found[key]
    lines.append(f'{key}: {len(details)}' + (f' ({meaning})' if meaning else ''))
    lines.extend(f'  {detail}' for detail in details[:shown])
    if len(details) > shown:
      lines.append(f'  ... and {len(details) - shown} more')

  for problem in PROBLEMS:
    add(problem)
  notices = [notice for notice in NOTICES if found[notice]]
  if notices:
    lines.append('notices (training reads these; not errors):')
  for notice in notices:
    add(notice, NOTICES[notice])
  return '\n'.join(lines)
