"""The eval benchmark's synthetic data and its `scripts/benchmark.py --mode eval` entry."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_util

from benchmarks import evaluation
from maskrcnn_jax.evaluation import coco_eval
from tests.conftest import REPO_ROOT


def test_synthetic_ground_truth_is_coco_shaped():
  gt = evaluation.synthetic_ground_truth(60, seed=0, crowd_fraction=0.1)
  assert len(gt['images']) == 60 and len(gt['categories']) == 80
  with_instances = {a['image_id'] for a in gt['annotations']}
  assert 0 < 60 - len(with_instances) < 15  # some empty images
  assert any(a['iscrowd'] for a in gt['annotations'])
  images = {image['id']: image for image in gt['images']}
  for annotation in gt['annotations'][:50]:
    image = images[annotation['image_id']]
    rle = mask_util.frPyObjects(annotation['segmentation'], image['height'], image['width'])
    assert annotation['area'] == mask_util.area(rle[0]) > 0
    x, y, w, h = annotation['bbox']
    assert 0 <= x and x + w <= image['width'] and 0 <= y and y + h <= image['height']


def test_jittered_results_have_exactly_per_image_detections():
  gt = evaluation.synthetic_ground_truth(12, seed=1)
  bbox_results, segm_results = evaluation.jittered_results(gt, per_image=40)
  counts = np.unique([r['image_id'] for r in bbox_results], return_counts=True)
  assert counts[0].tolist() == list(range(1, 13)) and set(counts[1]) == {40}
  assert [r['score'] for r in bbox_results] == [r['score'] for r in segm_results]
  table = coco_eval.coco_table(coco_eval.GroundTruth(gt), segm_results, 'segm')
  assert 0.02 < table['AP'] < 0.9  # neither nothing found nor everything


def test_time_host_and_cocoeval_rows_and_table():
  host = evaluation.time_host(5, [0, 2], per_image=10, batch=2)
  assert host['processes_0']['images'] == 4  # 2 batches of 2
  assert host['processes_2']['images'] == 4  # rounded up to a multiple of 2 tasks
  for row in host.values():
    assert row['images_per_second'] > 0 and row['cpu_ms_per_image'] > 0
  cocoeval = evaluation.time_cocoeval(4, coco_eval.ENGINES, per_image=10, processes=2)
  assert cocoeval['detections'] == 40
  for iou_type in ('bbox', 'segm'):
    assert abs(cocoeval[f'faster_coco_eval/{iou_type}']['AP'] -
               cocoeval[f'pycocotools/{iou_type}']['AP']) < 1e-12
  for engine in coco_eval.ENGINES:  # the tables at once were checked equal inside
    concurrent = cocoeval[f'{engine}/concurrent']
    assert concurrent['processes'] == 2 and concurrent['children_cpu_seconds'] > 0
  table = evaluation.markdown_table({'per_image': 10, 'mask_paste': 'bilinear',
                                         'cpus': 2, 'load_average': '0 0 0', 'host': host,
                                         'cocoeval': cocoeval})
  assert '| faster_coco_eval |' in table and '| pycocotools |' in table
  assert '| 1 (in process) | 4 |' in table and '| 2 | 4 |' in table
  assert ', 2 processes |' in table


@pytest.mark.slow
def test_benchmark_script_eval_mode(tmp_path):
  output = tmp_path / 'eval.json'
  result = subprocess.run(
      [sys.executable, 'scripts/benchmark.py', '--mode', 'eval', '--eval-images', '4',
       '--workers', '0', '--eval-cocoeval-images', '3', '--eval-engines',
       'faster_coco_eval', f'--output={output}'],
      cwd=REPO_ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  written = json.loads(output.read_text())
  assert set(written['host']) == {'processes_0', 'processes_1'}
  assert written['cocoeval']['images'] == 3
  assert '| faster_coco_eval |' in result.stdout
