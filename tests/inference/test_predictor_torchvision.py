"""Our Predictor against torchvision's maskrcnn_resnet50_fpn with the same weights.

tests/tools/record_torchvision_maskrcnn.py ran torchvision on three images with seeded
NumPy weights and stored the inputs and outputs (not the weights). Here the same weights
are rebuilt, converted with `convert.from_torchvision`, and the Predictor must give the
same detections; FPN features and proposals are compared too, so that a mismatch points
at its stage.
"""

import runpy
import sys

import jax
import numpy as np
import pytest

from maskrcnn_jax import checkpoint
from maskrcnn_jax import convert
from maskrcnn_jax.inference.predictor import Predictor
from maskrcnn_jax.model import mask_rcnn
from tests import numpy_reference
from tests.conftest import FIXTURES
from tests.conftest import load_config
from tests.conftest import REPO_ROOT
from tests.tools import seeded_weights

NUM_IMAGES = 3


def _torchvision_config(recorded):
  config = load_config('torchvision_r50_fpn')
  # The recording used smaller images than 800/1333 to keep this test quick.
  config.data.min_size = int(recorded['min_size'])
  config.data.max_size = int(recorded['max_size'])
  return config


@pytest.fixture(scope='module')
def recorded():
  return dict(np.load(FIXTURES / 'torchvision_maskrcnn.npz'))


@pytest.fixture(scope='module')
def state_dict(recorded):
  names_and_shapes = [(str(n), tuple(int(d) for d in s if d > 0))
                      for n, s in zip(recorded['names'], recorded['shapes'])]
  return seeded_weights.detection_friendly(
      seeded_weights.seeded_state_dict(names_and_shapes, int(recorded['seed'])))


@pytest.fixture(scope='module')
def predictor(recorded, state_dict):
  return Predictor(_torchvision_config(recorded), convert.from_torchvision(state_dict))


def test_conversion_fills_exactly_the_model_variables(recorded, state_dict):
  model = mask_rcnn.MaskRCNN(_torchvision_config(recorded).model)
  expected = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32),
                            jax.ShapeDtypeStruct((1, 4), np.float32))
  converted = convert.from_torchvision(state_dict)
  shapes = lambda tree: jax.tree_util.tree_map_with_path(
      lambda path, x: (jax.tree_util.keystr(path), x.shape), tree)
  assert jax.tree.leaves(shapes(converted)) == jax.tree.leaves(shapes(expected))


def test_convert_weights_script_writes_a_restorable_checkpoint(state_dict, tmp_path,
                                                               monkeypatch):
  # Reading a .pth needs torch, which the tests never need: hand the script the dict.
  monkeypatch.setattr(convert, 'load_torch_state_dict', lambda path: state_dict)
  monkeypatch.setattr(sys, 'argv', ['convert_weights.py', '--kind', 'maskrcnn', 'model.pth',
                                    str(tmp_path / 'converted')])
  runpy.run_path(str(REPO_ROOT / 'scripts' / 'convert_weights.py'), run_name='__main__')
  restored = checkpoint.restore_variables(str(tmp_path / 'converted'))
  jax.tree.map(np.testing.assert_array_equal, restored, convert.from_torchvision(state_dict))


def test_conversion_names_stray_and_missing_keys(state_dict):
  with pytest.raises(KeyError, match='roi_heads.extra.weight'):
    convert.from_torchvision({**state_dict, 'roi_heads.extra.weight': np.zeros(1)})
  with pytest.raises(KeyError, match='unexpected keys .*head.weight'):
    convert.from_torchvision({**state_dict, 'head.weight': np.zeros(1)})
  without = {k: v for k, v in state_dict.items() if k != 'rpn.head.bbox_pred.bias'}
  with pytest.raises(KeyError, match=r'missing keys \[.rpn.head.bbox_pred.bias.\]'):
    convert.from_torchvision(without)


@pytest.fixture(scope='module')
def detections(predictor, recorded):
  return [predictor(recorded[f'image_{i}']) for i in range(NUM_IMAGES)]




@pytest.mark.slow
@pytest.mark.parametrize('index', range(NUM_IMAGES))
def test_same_detections_as_torchvision(detections, recorded, index):
  ours = detections[index]
  boxes, scores = recorded[f'boxes_{index}'], recorded[f'scores_{index}']
  labels = recorded[f'labels_{index}']
  height, width = recorded[f'image_{index}'].shape[:2]
  masks = np.unpackbits(recorded[f'masks_{index}'])[:len(boxes) * height * width]
  masks = masks.reshape(len(boxes), height, width).astype(bool)

  assert len(ours['boxes']) == len(boxes)
  match = numpy_reference.match_boxes(ours['boxes'], boxes, atol=0.05)
  np.testing.assert_array_equal(ours['classes'][match], labels)
  np.testing.assert_allclose(ours['scores'][match], scores, atol=1e-4, rtol=0)
  assert ours['masks'].shape == masks.shape
  ious = [numpy_reference.mask_iou(a, b) for a, b in zip(ours['masks'][match], masks)]
  assert min(ious) >= 0.99, f'worst mask IoU {min(ious):.4f}'


@pytest.mark.slow
def test_one_compilation_per_padded_shape(detections, predictor):
  # Images 0 and 1 pad to the same 320x448; image 2 to 480x320.
  del detections
  assert predictor.num_compilations == 2


@pytest.fixture(scope='module')
def stages(predictor, recorded):
  """Our FPN features and proposals for each recorded image, from the same inputs."""
  model = mask_rcnn.MaskRCNN(predictor._config.model)  # pylint: disable=protected-access
  propose = jax.jit(lambda v, x, info: model.apply(v, x, info, method=model.propose))
  results = []
  for i in range(NUM_IMAGES):
    batch, image_info = predictor.preprocess([recorded[f'image_{i}']])
    np.testing.assert_array_equal(image_info[0, :2], recorded[f'resized_shape_{i}'])
    results.append(jax.device_get(propose(predictor._variables, batch, image_info)))  # pylint: disable=protected-access
  return results


@pytest.mark.slow
@pytest.mark.parametrize('level', [2, 3, 4, 5, 6])
def test_same_fpn_features_as_torchvision(stages, recorded, level):
  reference = recorded[f'fpn_p{level}']
  ours = stages[0]['features'][f'p{level}'][..., recorded['fpn_channels']]
  assert ours.shape == reference.shape
  scale = np.abs(reference).max()
  np.testing.assert_allclose(ours, reference, atol=1e-4 * scale, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize('index', range(NUM_IMAGES))
def test_same_proposals_as_torchvision(stages, recorded, index):
  reference = recorded[f'proposals_{index}']
  ours = stages[index]['proposals'][0][stages[index]['proposal_valid'][0]]
  assert len(ours) == len(reference)
  numpy_reference.match_boxes(ours, reference, atol=0.05)
