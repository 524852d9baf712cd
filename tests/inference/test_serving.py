"""The host functions a server calls around an artifact, against the Predictor."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from maskrcnn_jax import image_info as info_lib
from maskrcnn_jax.inference import export
from maskrcnn_jax.inference import predictor as predictor_lib
from maskrcnn_jax.inference import serving
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.train import step as step_lib
from tests.conftest import REPO_ROOT, load_config

# A server with nothing but the artifact folder: argv = artifact, images.npz, out.npz.
SERVE = '''
import sys
import numpy as np
from maskrcnn_jax.inference import export
exported, meta = export.load(sys.argv[1])
inputs = np.load(sys.argv[2])
images = [inputs[f'image{i}'] for i in range(len(inputs.files))]
results = export.predict(exported, meta, images)
np.savez(sys.argv[3], **{f'{key}{i}': value for i, r in enumerate(results)
                         for key, value in r.items()})
'''


def _landscape_config():
  """The tiny model on one 64 x 128 canvas, portraits transposed onto it."""
  config = load_config('tiny')
  d = config.data
  d.resize_mode, d.min_size, d.max_size = 'shorter_side', 64, 128
  d.image_size, d.extra_canvases, d.transpose_portrait = (64, 128), (), True
  return config


def _images():
  rng = np.random.default_rng(0)
  # landscape, portrait (transposed onto the canvas), a smaller landscape
  return [rng.integers(0, 256, shape, np.uint8)
          for shape in ((48, 96, 3), (100, 50, 3), (40, 70, 3))]


@pytest.fixture(scope='module')
def model_and_variables():
  config = _landscape_config()
  model = mask_rcnn.MaskRCNN(config.model)
  variables = step_lib.init_variables(model, tuple(config.data.image_size), jax.random.key(5))
  return config, model, variables


def test_preprocess_transposes_portraits_and_fills_empty_slots():
  config = _landscape_config()
  images = _images()
  batch, infos = serving.preprocess(images[:2], config, batch_size=3)
  assert batch.shape == (3, 64, 128, 3) and batch.dtype == np.uint8
  np.testing.assert_allclose(infos[0], info_lib.make(64, 128, 64 / 48))
  # 100 x 50 -> 128 x 64 (longer side capped at 128), lying transposed as 64 x 128
  np.testing.assert_allclose(infos[1], info_lib.make(64, 128, 128 / 100, transposed=True))
  np.testing.assert_array_equal(infos[2], 0.0)
  assert not batch[2].any()


def test_a_batch_larger_than_the_artifact_is_refused():
  config = _landscape_config()
  with pytest.raises(ValueError, match='3 images do not fit a batch of 2'):
    serving.preprocess(_images(), config, batch_size=2)


def test_a_non_rgb_input_is_named():
  with pytest.raises(ValueError, match=r'image 4: expected an \[H, W, 3\] RGB image'):
    serving.check_image(np.zeros((5, 5), np.uint8), 'image 4')


@pytest.mark.slow
def test_postprocess_matches_the_predictor(model_and_variables):
  config, model, variables = model_and_variables
  images = _images()
  batch, infos = serving.preprocess(images, config)
  outputs = jax.device_get(jax.jit(model.apply)(variables, batch, infos))
  results = serving.postprocess(outputs, [i.shape for i in images], infos, config)
  expected = predictor_lib.Predictor(config, variables).predict_batch(images)
  assert sum(len(r['scores']) for r in results) > 0
  for got, want in zip(results, expected):  # the same program, compiled twice: ulps apart
    np.testing.assert_array_equal(got['classes'], want['classes'])
    np.testing.assert_allclose(got['boxes'], want['boxes'], atol=1e-4)
    np.testing.assert_allclose(got['scores'], want['scores'], atol=1e-6)
    assert (got['masks'] != want['masks']).mean() < 1e-4


@pytest.mark.slow
def test_an_artifact_with_the_host_functions_gives_the_predictor_detections(
    model_and_variables, tmp_path):
  config, _, variables = model_and_variables
  images = _images()
  artifact = tmp_path / 'artifact'
  export.save(str(artifact), export.export_stablehlo(config, variables, 2),
              export.metadata(config, 2, tuple(config.data.image_size)))
  np.savez(tmp_path / 'images.npz', **{f'image{i}': image for i, image in enumerate(images)})
  result = subprocess.run(
      [sys.executable, '-c', SERVE, str(artifact), str(tmp_path / 'images.npz'),
       str(tmp_path / 'out.npz')], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  served = np.load(tmp_path / 'out.npz')
  expected = predictor_lib.Predictor(config, variables).predict_batch(images)
  assert sum(len(r['scores']) for r in expected) > 0
  for i, want in enumerate(expected):  # 2 batches of 2: the second has an empty slot
    assert served[f'masks{i}'].shape == want['masks'].shape
    np.testing.assert_array_equal(served[f'classes{i}'], want['classes'])
    np.testing.assert_allclose(served[f'boxes{i}'], want['boxes'], atol=1e-4)
    np.testing.assert_allclose(served[f'scores{i}'], want['scores'], atol=1e-6)
    assert (served[f'masks{i}'] != want['masks']).mean() < 1e-4
