"""benchmarks/input_pipeline.py: the numbers it reports are consistent and JSON-able."""

import json
import os

from benchmarks import input_pipeline
from maskrcnn_jax.config import default_config
from maskrcnn_jax.data import transforms
from tests.data import test_batches

varied = test_batches.varied  # the fixture: 14 images of varied sizes


def test_measure_input_on_a_small_folder(varied):  # pylint: disable=redefined-outer-name
  config = default_config()
  config.data = test_batches.batches_config()
  config.data.train_annotations = varied.annotation_file
  config.data.train_images = os.path.dirname(varied.records[0].path)
  config.train.batch_size = 4
  result = input_pipeline.measure_input(config, num_workers=(0,), num_batches=3,
                                         step_seconds=0.05)
  assert json.loads(json.dumps(result)) == result
  run, = result['runs']
  assert run['workers'] == 0 and run['images'] == 12
  # In this process the batches are made while the consumer waits, never during a step.
  assert run['seconds'] > 3 * 0.05 and run['wait_seconds'] < run['seconds'] - 3 * 0.05 + 1e-3
  assert abs(run['wait_share'] - run['wait_seconds'] / run['seconds']) < 1e-9
  assert abs(run['images_per_second'] - 12 / run['seconds']) < 1e-6 * run['images_per_second']
  assert result['scaling'] == {'0': 1.0} and result['images'] == 14
  per_key = result['bytes_per_image']
  assert per_key['images'] in {h * w * 3 for h, w in transforms.canvas_sizes(config.data)}
  assert per_key['gt_masks'] == 3 * 8 * 8 and per_key['image_info'] == 5 * 4
  assert per_key['total'] == sum(v for k, v in per_key.items() if k != 'total')
  assert set(result['stage_ms']) >= {'decode', 'resize', 'masks', 'total', 'total_cpu'}
  assert all(ms > 0 for ms in result['stage_ms'].values())
  assert result['file_bytes_per_image'] > 0
  table = input_pipeline.markdown(result)
  assert '| 0 | ' in table and '| gt_masks | 192 |' in table
