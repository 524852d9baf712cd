"""`predictor.check_variables`: a checkpoint that does not fit the config's model is one
line naming the variable, both shapes and the config key, before anything compiles."""

import jax
import numpy as np
import pytest

from maskrcnn_jax.inference import predictor
from maskrcnn_jax.model import mask_rcnn
from tests.conftest import load_config


def _shapes(config):
  """The model's variables as shapes only (what `check_variables` compares)."""
  height, width = config.data.image_size
  return jax.eval_shape(mask_rcnn.MaskRCNN(config.model).init, jax.random.key(0),
                        jax.ShapeDtypeStruct((1, height, width, 3), np.uint8),
                        jax.ShapeDtypeStruct((1, 5), np.float32))


@pytest.fixture(name='tiny_variables', scope='module')
def _tiny_variables():
  return _shapes(load_config('tiny'))


@pytest.mark.parametrize('key, value, message', [
    ('num_classes', 80,
     'run/checkpoints: variable params/box_head/cls_score/kernel has shape (32, 5) but the '
     'model of this config needs (32, 81) (and 5 more): check model.num_classes (the '
     'checkpoint has 4 classes, this config 80) against the config that trained it'),
    ('fpn.channels', 32,
     'run/checkpoints: variable params/fpn/lateral2/kernel has shape (1, 1, 64, 16) but the '
     'model of this config needs (1, 1, 64, 32) (and 21 more): check model.fpn.channels'),
    ('box_head.fc_dim', 64,
     'variable params/box_head/fc6/kernel has shape (784, 32) but the model of this config '
     'needs (784, 64) (and 5 more): check model.box_head (fc_dim, pooled_size)'),
    ('anchors.aspect_ratios', (1.0,),
     'params/rpn/cls_logits/kernel has shape (1, 1, 16, 3) but the model of this config '
     'needs (1, 1, 16, 1) (and 3 more): check model.anchors.aspect_ratios'),
    ('mask_head.enabled', False,
     'run/checkpoints has the variable params/mask_head/mask_fcn_logits/kernel (and 5 more) '
     "that this config's model has not: check model.mask_head (enabled, num_convs)"),
    ('mask_head.num_convs', 2,
     'run/checkpoints lacks the variable params/mask_head/mask_fcn2/kernel (and 1 more) that '
     "this config's model has: check model.mask_head (enabled, num_convs)"),
    ('backbone.depth', 50, 'check model.backbone (depth, norm)'),
])
def test_a_mismatch_names_the_variable_the_shapes_and_the_key(tiny_variables, key, value,
                                                              message):
  config = load_config('tiny')
  *sections, name = key.split('.')
  parent = config.model
  for section in sections:
    parent = parent[section]
  parent[name] = value
  with pytest.raises(ValueError) as raised:
    predictor.check_variables(config, tiny_variables, 'run/checkpoints')
  assert message in str(raised.value)
  assert '\n' not in str(raised.value)


def test_matching_variables_pass_whatever_the_canvas(tiny_variables):
  config = load_config('tiny')
  config.data.image_size = (128, 192)  # variables do not depend on the image size
  predictor.check_variables(config, tiny_variables)
  config = load_config('maskrcnn_r50_fpn_1x')
  predictor.check_variables(config, _shapes(config))


def test_the_predictor_refuses_them_before_compiling(tiny_variables, monkeypatch):
  config = load_config('tiny')
  config.model.num_classes = 3
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), tiny_variables)

  def no_jit(*args, **kwargs):
    raise AssertionError('jitted before the variables were checked')
  monkeypatch.setattr(predictor.compiler, 'jit', no_jit)
  with pytest.raises(ValueError, match=r'the variables: variable params/box_head/cls_score/'
                     r'kernel has shape \(32, 5\) but the model of this config needs '
                     r'\(32, 4\)'):
    predictor.Predictor(config, variables)
