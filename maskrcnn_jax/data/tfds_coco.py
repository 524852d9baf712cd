"""TFDS builder `coco_instances`: COCO-format instance annotations with masks.

TFDS's own `coco/2017` keeps boxes but no masks. This builder prepares any COCO-format
folder once, offline, from a manual directory holding, for each split `<name>`:
  annotations/instances_<name>.json  and  <name>/ (the images it names),
either as files or inside zips (the official `annotations_trainval2017.zip`,
`train2017.zip` and `val2017.zip` give splits `train2017` and `val2017`). Every split
is validated by `coco.load_coco` (same errors and counted skips), masks are stored as
compressed RLE strings ('' for a box-only object), images as their original encoded
bytes, and keypoints (COCO person keypoints, or any file whose categories declare
`keypoints`) as one [num_objects * K, 3] array per image, the K names in the builder's
metadata:

  prepare(manual_dir, data_dir)
  builder = tfds.builder('coco_instances', data_dir=data_dir)  # after importing this module
  builder.as_data_source('val2017')[0]  # a dict of NumPy arrays (no tf.data for ArrayRecord)

`load_tfds` reads a split back as a `structures.CocoDataset` (random access through
ArrayRecord), so batches come from the same pipeline code as the COCO files.
"""

import os
import pathlib
from typing import Sequence
import zipfile

from etils import epath
import numpy as np
from pycocotools import mask as mask_util
import tensorflow_datasets as tfds

from maskrcnn_jax.data import coco
from maskrcnn_jax.data import structures

NAME = 'coco_instances'


def _compressed_rle(segmentation, height: int, width: int) -> str:
  """A validated COCO segmentation -> compressed RLE counts string ('' for None: no mask)."""
  if segmentation is None:
    return ''
  if isinstance(segmentation, dict) and isinstance(segmentation['counts'], str):
    return segmentation['counts']
  rles = mask_util.frPyObjects(segmentation, height, width)
  rle = mask_util.merge(rles) if isinstance(rles, list) else rles
  return rle['counts'].decode('ascii')


def _extract_zip(zip_path: str, extract_root: str) -> str:
  """Extracts once into `extract_root/<zip name>/`; a marker makes a rerun skip it.

  The standard library's zipfile, not TFDS's extractor, which needs TensorFlow.
  """
  destination = os.path.join(extract_root, os.path.basename(zip_path)[:-len('.zip')])
  marker = os.path.join(destination, '.extracted')
  if not os.path.exists(marker):
    try:
      with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(destination)
    except zipfile.BadZipFile as error:
      raise ValueError(f'{zip_path}: not a readable zip file ({error})') from error
    pathlib.Path(marker).touch()
  return destination


def _find_splits(roots: Sequence[str]) -> dict[str, tuple[str, str]]:
  """split -> (annotation file, image folder) for `annotations/instances_<split>.json`."""
  splits = {}
  for root in roots:
    annotation_dir = os.path.join(root, 'annotations')
    if not os.path.isdir(annotation_dir):
      continue
    for file_name in sorted(os.listdir(annotation_dir)):
      if file_name.startswith('instances_') and file_name.endswith('.json'):
        split = file_name[len('instances_'):-len('.json')]
        image_dirs = [os.path.join(r, split) for r in roots
                      if os.path.isdir(os.path.join(r, split))]
        if not image_dirs:
          raise FileNotFoundError(f'no image folder {split}/ for {annotation_dir}/{file_name}')
        splits[split] = (os.path.join(annotation_dir, file_name), image_dirs[0])
  return splits


class CocoInstances(tfds.core.GeneratorBasedBuilder):
  """COCO-format instances with boxes, classes, crowd flags and RLE masks."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': 'Keypoints ([num_objects * K, 3] per image) and their names.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put in the manual directory, for each split <name>, `annotations/instances_<name>.json`
  and the image folder `<name>/`, or zips holding them (for COCO 2017, the official
  annotations_trainval2017.zip, train2017.zip and val2017.zip from cocodataset.org).
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10's default imports `importlib_resources`, which it does not install.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'image/id': np.int64,
            'image/filename': tfds.features.Text(),
            'height': np.int64,
            'width': np.int64,
            'objects': tfds.features.Sequence({
                'id': np.int64,
                'box': tfds.features.Tensor(shape=(4,), dtype=np.float32),  # x1y1x2y2 px
                'label': np.int64,  # contiguous class 1..K
                'category_id': np.int64,
                'is_crowd': np.bool_,
                # compressed RLE counts, size [height, width]; '' for a box-only object
                'rle': tfds.features.Text(),
            }),
            # Object i's keypoints are rows i*K .. i*K+K-1 (x, y, visibility); no rows
            # when the categories declare no keypoints (K = 0).
            'keypoints': tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
        }),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # example i of a split is record i of its annotation file
        homepage='https://cocodataset.org',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    zips = [os.path.join(manual_dir, name) for name in sorted(os.listdir(manual_dir))
            if name.endswith('.zip')]
    extract_root = os.path.join(os.fspath(dl_manager.download_dir), 'extracted')
    roots = [manual_dir] + [_extract_zip(z, extract_root) for z in zips]
    splits = _find_splits(roots)
    if not splits:
      raise FileNotFoundError(f'{manual_dir}: no annotations/instances_<split>.json found')
    datasets = {split: coco.load_coco(annotations, images, filter_empty=False)
                for split, (annotations, images) in splits.items()}
    categories = {(d.category_ids, d.class_names, d.keypoint_names)
                  for d in datasets.values()}
    if len(categories) != 1:
      raise ValueError(f'{manual_dir}: the splits have different categories or keypoints')
    category_ids, class_names, keypoint_names = categories.pop()
    self.info.metadata.update({
        'category_ids': list(category_ids), 'class_names': list(class_names),
        'keypoint_names': list(keypoint_names),
        'splits': {split: {'instance_counts': d.instance_counts.tolist(),
                           'non_crowd_counts': [int((~r.is_crowd).sum()) for r in d.records],
                           'keypoint_counts': [coco.labelled_keypoints(r.keypoints)
                                               for r in d.records],
                           'without_segmentation_counts': [
                               sum(s is None for s in r.segmentations) for r in d.records],
                           'without_segmentation_ids': list(d.without_segmentation_ids),
                           'skipped': d.skipped, 'annotation_file': d.annotation_file}
                   for split, d in datasets.items()}})
    return {split: self._generate_examples(d) for split, d in datasets.items()}

  def _generate_examples(self, dataset: structures.CocoDataset):
    for index, record in enumerate(dataset.records):
      category_ids = np.asarray(dataset.category_ids, np.int64)[record.classes - 1]
      yield index, {
          'image': record.path,
          'image/id': record.image_id,
          'image/filename': os.path.basename(record.path),
          'height': record.height,
          'width': record.width,
          'objects': {
              'id': record.annotation_ids,
              'box': record.boxes.reshape(-1, 4),
              'label': record.classes.astype(np.int64),
              'category_id': category_ids,
              'is_crowd': record.is_crowd,
              'rle': [_compressed_rle(s, record.height, record.width)
                      for s in record.segmentations],
          },
          'keypoints': (np.zeros((0, 3), np.float32) if record.keypoints is None
                        else record.keypoints.reshape(-1, 3)),
      }


def prepare(manual_dir: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """Prepares `coco_instances` from `manual_dir` into `data_dir` (ArrayRecord files)."""
  builder = CocoInstances(data_dir=data_dir, file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


class _Records(Sequence[structures.ImageRecord]):
  """Lazy `ImageRecord`s of a prepared split, read on access."""

  def __init__(self, source, indices: np.ndarray, where: str,
               keypoint_names: tuple[str, ...]):
    self._source = source
    self._indices = indices
    self._where = where
    self._keypoint_names = keypoint_names

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    index = int(self._indices[i])
    example = self._source[index]
    height, width = int(example['height']), int(example['width'])
    objects = example['objects']
    rles = [r.decode('ascii') if isinstance(r, bytes) else str(r) for r in objects['rle']]
    keypoints = None
    if self._keypoint_names:
      keypoints = np.asarray(example['keypoints'], np.float32).reshape(
          len(rles), len(self._keypoint_names), 3)
    return structures.ImageRecord(
        image_id=int(example['image/id']),
        path=f"{self._where}[{index}] ({example['image/filename'].decode()})",
        height=height, width=width,
        annotation_ids=np.asarray(objects['id'], np.int64),
        boxes=np.asarray(objects['box'], np.float32).reshape(-1, 4),
        classes=np.asarray(objects['label'], np.int32),
        is_crowd=np.asarray(objects['is_crowd'], bool),
        segmentations=tuple({'counts': r, 'size': [height, width]} if r else None
                            for r in rles),
        source=self._where, image_bytes=example['image'], keypoints=keypoints,
        keypoint_names=self._keypoint_names)


def load_tfds(data_dir: str, split: str, filter_empty: bool,
              name: str = NAME, min_keypoints: int = 0) -> structures.CocoDataset:
  """A prepared split as a `structures.CocoDataset` with lazily read records.

  Args:
    data_dir: the TFDS data_dir given to `prepare`.
    split: a split name (`<name>` of `instances_<name>.json`).
    filter_empty: drop images without non-crowd instances (as `coco.load_coco`).
    name: the registered builder name (with an optional `:version`).
    min_keypoints: drop images with fewer labelled keypoints (as `coco.load_coco`).
  """
  builder = tfds.builder(name, data_dir=data_dir)
  meta = builder.info.metadata['splits'][split]
  has_instances = np.array([bool(n) or not filter_empty for n in meta['non_crowd_counts']],
                           bool)
  has_keypoints = np.asarray(meta['keypoint_counts'], np.int64) >= min_keypoints
  indices = np.flatnonzero(has_instances & has_keypoints)
  skipped = dict(meta['skipped'], empty_images=int((~has_instances).sum()),
                 few_keypoints=int((has_instances & ~has_keypoints).sum()))
  source = builder.as_data_source(split, decoders={'image': tfds.decode.SkipDecoding()})
  where = f'{os.path.join(data_dir, builder.name)} {split}'
  keypoint_names = tuple(builder.info.metadata['keypoint_names'])
  # Splits prepared before box-only objects were kept have none.
  without_segmentation = np.asarray(
      meta.get('without_segmentation_counts', np.zeros(len(meta['instance_counts']))),
      np.int64)[indices]
  return structures.CocoDataset(
      records=_Records(source, indices, where, keypoint_names),
      instance_counts=np.asarray(meta['instance_counts'], np.int64)[indices],
      category_ids=tuple(builder.info.metadata['category_ids']),
      class_names=tuple(builder.info.metadata['class_names']),
      skipped=skipped, annotation_file=where, keypoint_names=keypoint_names,
      num_without_segmentation=int(without_segmentation.sum()),
      without_segmentation_ids=tuple(meta.get('without_segmentation_ids', ())))
