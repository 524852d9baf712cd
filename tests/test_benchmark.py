"""scripts/benchmark.py runs both modes on the tiny config and reports positive numbers."""

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

TIMING_KEYS = {'framework', 'measured', 'first_call_s', 'median_s', 'times_s',
               'images_per_second'}


TORCH_MISSING = any(importlib.util.find_spec(n) is None for n in ('torch', 'torchvision'))


@pytest.mark.slow
def test_train_and_infer_report_timings_and_memory(tmp_path):
  markdown = tmp_path / 'bench.md'
  # Without torch, asking for the comparison must say so and still time maskrcnn-jax.
  compare = ['--compare=torchvision'] if TORCH_MISSING else []
  processes = {}
  for mode in ('train', 'infer'):  # both at once: each is mostly one compilation
    processes[mode] = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / 'scripts' / 'benchmark.py'),
         f'--config={REPO_ROOT / "configs" / "tiny.py"}', f'--mode={mode}', '--batch=2',
         '--image-size=64x64', '--steps=2', '--warmup=0', '--instances=5',
         f'--output={tmp_path / mode}.json', f'--markdown={markdown}', *compare],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  for mode, process in processes.items():
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert '| maskrcnn-jax |' in stdout

    result = json.loads((tmp_path / f'{mode}.json').read_text())
    assert (result['mode'], result['batch'], result['image_size'], result['instances']) == (
        mode, 2, [64, 64], 5)
    jax_part = result['jax']
    expected_rows = (['train step'] if mode == 'train' else
                     ['Predictor.predict_batch (host paste incl.)', 'jitted model forward'])
    assert [row['measured'] for row in jax_part['rows']] == expected_rows
    for row in jax_part['rows']:
      assert set(row) == TIMING_KEYS
      assert len(row['times_s']) == 2 and min(row['times_s']) > 0
      assert row['median_s'] == pytest.approx(sum(row['times_s']) / 2)
      assert row['images_per_second'] == pytest.approx(2 / row['median_s'])
      assert row['first_call_s'] > row['median_s']  # the first call compiles
    assert jax_part['host_peak_mb'] > jax_part['host_growth_mb'] > 0
    assert jax_part['device_peak_mb'] == 'n/a' or jax_part['device_peak_mb'] > 0
    assert 'torchvision' not in result
    if TORCH_MISSING:
      assert 'needs torch' in result['compare_error'] and 'needs torch' in stderr
    if mode == 'infer':  # score threshold 0: every image keeps detections_per_image
      assert jax_part['detections_per_image'] == 100
    else:  # tiny: 16 sampled RoIs per image, a quarter of them foreground
      assert jax_part['mask_head_rois_per_image'] == 4
      assert ('5 ground-truth instances per image; mask head RoIs per image: '
              'maskrcnn-jax 4') in stdout
  assert markdown.read_text().count('| maskrcnn-jax |') == 3


@pytest.mark.parametrize('flag, message', [
    ('--image-size=64by64', '64by64'),
    ('--instances=9', '--instances must be 1..8 (data.max_instances); got 9'),
])
def test_bad_flag_is_a_usage_error(flag, message):
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / 'scripts' / 'benchmark.py'),
       f'--config={REPO_ROOT / "configs" / "tiny.py"}', '--mode=train', flag],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert message in result.stderr
