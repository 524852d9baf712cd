"""scripts/benchmark.py --mode serving: every serving path timed and checked against jit."""

import jax
import numpy as np
import pytest

from benchmarks import serving
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.train import step as step_lib
from tests.conftest import load_config


@pytest.mark.slow
def test_stablehlo_row_matches_the_jitted_forward():
  config = load_config('tiny')
  variables = step_lib.init_variables(mask_rcnn.MaskRCNN(config.model),
                                      tuple(config.data.image_size), jax.random.key(0))
  result = serving.run(config, variables, batch_size=2, steps=2,
                                 paths=('stablehlo',))
  rows = {r['path']: r for r in result['rows']}
  assert list(rows) == ['jax.jit', 'stablehlo']
  hlo = rows['stablehlo']
  # The same program through jax.export: identical detections, no box difference.
  assert hlo['same_detections'] is True and hlo['max_box_difference_px'] == 0.0
  assert hlo['artifact_mb'] > 0.1 and hlo['export_s'] > 0
  for row in rows.values():
    assert 0 < row['median_call_s'] <= row['first_call_s'] + row['median_call_s']
    np.testing.assert_allclose(row['ms_per_image'], 1000 * row['median_call_s'] / 2)
  assert result['host']['preprocess_ms_per_image'] > 0
  assert result['host']['postprocess_ms_per_image'] > 0
  table = serving.markdown_table(result)
  assert '| stablehlo |' in table and '| jax.jit |' in table and 'yes' in table


def test_missing_runtimes_are_named():
  for path in ('saved_model', 'onnx'):
    why = serving.missing(path)
    assert why == '' or why.endswith('is not installed')
  assert serving.missing('stablehlo') == ''
