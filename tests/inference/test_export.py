"""Exported StableHLO, SavedModel and ONNX, loaded in a fresh process, against the JAX model."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from maskrcnn_jax import checkpoint
from maskrcnn_jax import image_info as info_lib
from maskrcnn_jax.inference import export
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.train import step as step_lib
from tests.conftest import REPO_ROOT, load_config

# Runs an artifact in a process that never built the model: argv = artifact, inputs, out.
RUN_ARTIFACT = '''
import sys
import numpy as np
from maskrcnn_jax.inference import export
exported, meta = export.load(sys.argv[1])
inputs = np.load(sys.argv[2])
outputs = export.run(exported, inputs['images'], inputs['image_info'])
np.savez(sys.argv[3], **outputs)
print(meta['batch_size'], meta['canvas'])
'''


def _inputs(config, batch_size):
  """Random images; the last slot is padding (zero image_info): it has no detections."""
  height, width = config.data.image_size
  rng = np.random.default_rng(batch_size)
  images = rng.integers(0, 256, (batch_size, height, width, 3), np.uint8)
  info = np.stack([info_lib.make(height, width, 1.0)] * batch_size)
  if batch_size > 1:
    images[-1], info[-1] = 0, 0.0
  return images, info


def _run_fresh(artifact, images, info, tmp_path):
  np.savez(tmp_path / 'inputs.npz', images=images, image_info=info)
  result = subprocess.run(
      [sys.executable, '-c', RUN_ARTIFACT, str(artifact), str(tmp_path / 'inputs.npz'),
       str(tmp_path / 'outputs.npz')], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return dict(np.load(tmp_path / 'outputs.npz'))


def _check_same(outputs, expected, tolerance=1e-5):
  np.testing.assert_array_equal(outputs['valid'], expected['valid'])
  np.testing.assert_array_equal(outputs['classes'], expected['classes'])
  differences = {key: float(np.max(np.abs(outputs[key] - np.asarray(expected[key]))))
                 for key in ('boxes', 'scores', 'masks')}
  print('max |exported - jax|:', differences)  # the report the issue asks for
  assert max(differences.values()) <= tolerance, differences


@pytest.fixture(scope='module')
def tiny():
  config = load_config('tiny')
  model = mask_rcnn.MaskRCNN(config.model)
  variables = step_lib.init_variables(model, tuple(config.data.image_size), jax.random.key(3))
  return config, model, variables


@pytest.mark.slow
def test_exported_batch_one_matches_the_model_in_a_fresh_process(tiny, tmp_path):
  config, model, variables = tiny
  artifact = tmp_path / 'artifact'
  export.save(str(artifact), export.export_stablehlo(config, variables, 1),
              export.metadata(config, 1, tuple(config.data.image_size)))
  images, info = _inputs(config, 1)
  outputs = _run_fresh(artifact, images, info, tmp_path)
  expected = jax.jit(model.apply)(variables, images, info)
  assert outputs['valid'][0].any()
  _check_same(outputs, expected)


@pytest.mark.slow
def test_export_script_writes_an_artifact_that_matches_at_batch_three(tiny, tmp_path):
  config, model, variables = tiny
  checkpoint.save_variables(str(tmp_path / 'weights'), variables)
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / 'scripts' / 'export.py'),
       f'--config={REPO_ROOT / "configs" / "tiny.py"}', f'--checkpoint={tmp_path / "weights"}',
       '--batch=3', f'--out={tmp_path / "artifact"}'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  meta = json.loads((tmp_path / 'artifact' / export.METADATA_FILE).read_text())
  assert meta['batch_size'] == 3 and meta['canvas'] == list(config.data.image_size)
  assert meta['num_classes'] == config.model.num_classes
  assert meta['outputs']['masks'].startswith('[3, 100, 28, 28] float32')
  images, info = _inputs(config, 3)
  outputs = _run_fresh(tmp_path / 'artifact', images, info, tmp_path)
  expected = jax.jit(model.apply)(variables, images, info)
  assert outputs['valid'][0].any() and not outputs['valid'][2].any()  # padding: none
  _check_same(outputs, expected)


def test_export_script_refuses_a_canvas_the_config_does_not_have(tmp_path):
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / 'scripts' / 'export.py'),
       f'--config={REPO_ROOT / "configs" / "tiny.py"}', f'--checkpoint={tmp_path}',
       '--canvas=128x128', f'--out={tmp_path / "artifact"}'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert 'error: --canvas must be one of the config canvases 64x64' in result.stderr
  assert 'Traceback' not in result.stderr


def test_load_names_a_folder_without_an_artifact(tmp_path):
  with pytest.raises(FileNotFoundError, match='no model.stablehlo'):
    export.load(str(tmp_path))


# Loads a SavedModel in a process without JAX's model code: argv = saved model, inputs, out.
RUN_SAVED_MODEL = '''
import sys
import numpy as np
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']
inputs = np.load(sys.argv[2])
outputs = serve(images=tf.constant(inputs['images']), image_info=tf.constant(inputs['image_info']))
np.savez(sys.argv[3], **{key: value.numpy() for key, value in outputs.items()})
'''


@pytest.mark.slow
def test_saved_model_matches_the_model_in_a_fresh_process(tiny, tmp_path):
  pytest.importorskip('tensorflow', reason='TensorFlow is not a test dependency; the '
                      'SavedModel export is checked where it is installed')
  config, model, variables = tiny
  path = export.export_saved_model(config, variables, 2, str(tmp_path))
  images, info = _inputs(config, 2)
  np.savez(tmp_path / 'inputs.npz', images=images, image_info=info)
  result = subprocess.run(
      [sys.executable, '-c', RUN_SAVED_MODEL, path, str(tmp_path / 'inputs.npz'),
       str(tmp_path / 'outputs.npz')], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  outputs = dict(np.load(tmp_path / 'outputs.npz'))
  expected = jax.jit(model.apply)(variables, images, info)
  assert outputs['valid'][0].any() and not outputs['valid'][1].any()  # padding: none
  _check_same(outputs, expected)


def _skip_without_onnx():
  for module in ('jax2onnx', 'onnxruntime'):
    pytest.importorskip(module, reason='jax2onnx and onnxruntime are not test dependencies '
                        "(pip install '.[onnx]'); the ONNX export is checked where they are "
                        'installed')


@pytest.mark.slow
def test_onnx_batch_one_matches_the_model_in_a_fresh_process(tiny, tmp_path):
  _skip_without_onnx()
  config, model, variables = tiny
  artifact = tmp_path / 'artifact'
  export.export_onnx(config, variables, 1, str(artifact))
  export.write_metadata(str(artifact), export.metadata(
      config, 1, tuple(config.data.image_size), artifact_format='onnx'))
  images, info = _inputs(config, 1)
  outputs = _run_fresh(artifact, images, info, tmp_path)
  expected = jax.jit(model.apply)(variables, images, info)
  assert outputs['valid'][0].any()
  _check_same(outputs, expected, tolerance=1e-4)


@pytest.mark.slow
def test_onnx_export_script_matches_at_batch_three(tiny, tmp_path):
  _skip_without_onnx()
  config, model, variables = tiny
  checkpoint.save_variables(str(tmp_path / 'weights'), variables)
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / 'scripts' / 'export.py'),
       f'--config={REPO_ROOT / "configs" / "tiny.py"}', f'--checkpoint={tmp_path / "weights"}',
       '--format=onnx', '--batch=3', f'--out={tmp_path / "artifact"}'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  meta = json.loads((tmp_path / 'artifact' / export.METADATA_FILE).read_text())
  assert meta['format'] == 'onnx' and meta['batch_size'] == 3
  assert not (tmp_path / 'artifact' / export.STABLEHLO_FILE).exists()
  images, info = _inputs(config, 3)
  outputs = _run_fresh(tmp_path / 'artifact', images, info, tmp_path)
  expected = jax.jit(model.apply)(variables, images, info)
  assert outputs['valid'][0].any() and not outputs['valid'][2].any()  # padding: none
  _check_same(outputs, expected, tolerance=1e-4)
