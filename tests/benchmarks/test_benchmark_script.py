"""scripts/benchmark.py (benchmarks/main.py) and scripts/gpu_benchmark.sh on the tiny config
(the CPU run)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from benchmarks import main as benchmarks_main
from tests.conftest import REPO_ROOT

TIMING_KEYS = {'framework', 'measured', 'first_call_s', 'median_s', 'times_s',
               'images_per_second'}
TORCH_MISSING = any(importlib.util.find_spec(n) is None for n in ('torch', 'torchvision'))


@pytest.mark.slow
def test_gpu_benchmark_script_runs_train_and_infer_into_one_json(tmp_path):
  out = tmp_path / 'out'
  env = dict(os.environ, QUICK='1', PYTHON=sys.executable, WHEELS=str(tmp_path / 'none'),
             PEAK_TFLOPS='2')
  result = subprocess.run(['bash', str(REPO_ROOT / 'scripts' / 'gpu_benchmark.sh'), str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((out / 'gpu_benchmark.json').read_text())
  assert not list(out.glob('part*.json'))
  runs = summary['runs']
  assert [run['mode'] for run in runs] == ['train', 'infer']
  for run in runs:
    assert run['image_size'] == [64, 64] and run['peak_tflops'] == 2
    (case,) = run['cases']
    assert (case['batch'], case['dtype']) == (2, 'float32')
    jax_part = case['jax']
    expected_rows = (['train step'] if run['mode'] == 'train' else
                     ['Predictor.predict_batch (host paste incl.)', 'jitted model forward'])
    assert [row['measured'] for row in jax_part['rows']] == expected_rows
    for row in jax_part['rows']:
      assert set(row) == TIMING_KEYS
      assert len(row['times_s']) == 1 and row['median_s'] == row['times_s'][0] > 0
      assert row['images_per_second'] == pytest.approx(2 / row['median_s'])
    (program,) = jax_part['programs'].values()
    # The loop counts themselves are checked in tests/runtime/test_compiled_programs.py.
    assert {program['while_loops_dynamic_trip_count'],
            program['while_loops_static_trip_count']} <= set(range(1000))
    assert program['gflops_per_image'] == pytest.approx(program['flops'] / 2 / 1e9)
    assert program['temp_mb_per_image'] == pytest.approx(program['temp_bytes'] / 2 / 2**20)
    assert program['mfu'] == pytest.approx(program['achieved_tflops'] / 2)
    assert program['compile_s'] > 0
    timed = jax_part['rows'][-1]['median_s']
    assert program['achieved_tflops'] == pytest.approx(program['flops'] / timed / 1e12)
    assert jax_part['host_peak_mb'] > jax_part['host_growth_mb'] > 0
    if TORCH_MISSING:
      assert 'needs torch' in run['compare_error'] and 'torchvision' not in case
    if run['mode'] == 'infer':  # score threshold 0: every image keeps detections_per_image
      assert jax_part['detections_per_image'] == 100
    else:  # tiny: 16 sampled RoIs per image, a quarter of them foreground
      assert jax_part['mask_head_rois_per_image'] == 4
  markdown = (out / 'benchmark.md').read_text()
  assert markdown.count('| maskrcnn-jax |') == 3
  assert markdown.count('| XLA program |') == 2
  assert ('5 ground-truth instances per image; mask head RoIs per image: '
          'maskrcnn-jax 4') in markdown


@pytest.mark.parametrize('flag, message', [
    ('--image-size=64by64', '64by64'),
    ('--instances=9', '--instances must be 1..8 (data.max_instances); got 9'),
    ('--batch=2,x', '--batch takes sizes like 1 or 1,8'),
    ('--dtype=float16', '--dtype takes float32 and/or bfloat16'),
    ('--annotations=a.json', '--annotations and --images go together'),
])
@pytest.mark.slow
def test_bad_flag_is_a_usage_error(flag, message):
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / 'scripts' / 'benchmark.py'),
       f'--config={REPO_ROOT / "configs" / "tiny.py"}', '--mode=train', flag],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert message in result.stderr


@pytest.mark.parametrize('argv, message', [
    (['--mode=train'], '--mode train needs --config'),
    (['--mode=nms', '--steps=0'], '--steps must be positive'),
    (['--mode=serving', '--config=c.py', '--image-size=100x64'],
     '--image-size sides must be multiples of 64'),
])
def test_flag_checks_of_each_mode(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    benchmarks_main.main(argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
