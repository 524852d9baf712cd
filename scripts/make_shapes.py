"""Writes the synthetic shapes dataset as COCO files (train and val splits).

  python scripts/make_shapes.py --out data/shapes --num_train 512 --num_val 64 --size 128

Then point the config at it: data.train_annotations=<out>/annotations/instances_train.json,
data.train_images=<out>/train (and the same for val).
"""

from absl import flags

from maskrcnn_jax import cli
from maskrcnn_jax.data import shapes

_OUT = flags.DEFINE_string('out', 'data/shapes', 'output folder')
_NUM_TRAIN = flags.DEFINE_integer('num_train', 512, 'training images')
_NUM_VAL = flags.DEFINE_integer('num_val', 64, 'validation images')
_SIZE = flags.DEFINE_integer('size', 128, 'image side in pixels')
_SEED = flags.DEFINE_integer('seed', 0, 'generation seed')


def main(argv):
  del argv
  splits = shapes.write_shapes(_OUT.value, _NUM_TRAIN.value, _NUM_VAL.value, _SIZE.value,
                               _SEED.value)
  for split, (annotations, images) in splits.items():
    print(f'{split}: {annotations} {images}')


if __name__ == '__main__':
  cli.run(main, config_keys=False)
