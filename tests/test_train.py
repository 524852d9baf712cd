"""The train step: every loss term falls, one compilation, 8 devices equal one."""

import textwrap

import jax
import numpy as np

from maskrcnn_jax import config as config_lib
from maskrcnn_jax import parallel
from maskrcnn_jax import train
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import shapes
from tests.conftest import REPO_ROOT
from tests.conftest import run_on_eight_cpu_devices

LOSS_TERMS = ('rpn_cls', 'rpn_box', 'cls', 'box', 'mask')


def tiny_config(data_root: str):
  """ResNet-18 with narrow heads on 64x64 shapes images, for CPU tests."""
  c = config_lib.default_config()
  m = c.model
  m.num_classes = 4
  m.backbone.depth = 18
  m.backbone.freeze_at = 0
  m.fpn.channels = 16
  m.anchors.sizes = (8, 16, 32, 64, 128)
  m.rpn.pre_nms_topk_train = 64
  m.rpn.post_nms_topk_train = 32
  m.rpn.batch_size_per_image = 32
  m.roi_heads.batch_size_per_image = 16
  m.box_head.fc_dim = 32
  m.mask_head.conv_dim = 8
  m.mask_head.num_convs = 1
  d = c.data
  d.dataset = 'shapes'
  d.train_annotations, d.train_images = shapes.write_split(data_root, 'train', 8, 64, seed=0)
  d.resize_mode, d.min_size, d.max_size, d.image_size = 'square', 64, 64, (64, 64)
  d.max_instances = 8
  d.mask_size = 28
  d.random_flip = False
  t = c.train
  t.base_lr, t.warmup_steps, t.lr_steps = 0.02, 0, ()
  return c


def _first_batch(config, batch_size):
  dataset = pipeline.load_split(config.data, 'train')
  with pipeline.Batches(dataset, config.data, batch_size, train=True, seed=0) as batches:
    return next(iter(batches))


def test_every_loss_term_falls_and_the_step_compiles_once(tmp_path):
  config = tiny_config(str(tmp_path / 'shapes'))
  batch = _first_batch(config, 2)
  mesh = parallel.data_mesh()
  model, optimizer, state = train.create_train_state(config, jax.random.key(0))
  step = train.jit_train_step(model, optimizer, config.train, mesh)
  state = parallel.replicate(state, mesh)
  key = jax.random.key(1)
  history = []
  for _ in range(40):  # the same batch: the losses must fall as the model fits it
    state, metrics = step(state, parallel.host_batch_to_global(batch, mesh), key)
    history.append(jax.device_get(metrics))
  assert step._cache_size() == 1  # pylint: disable=protected-access
  assert int(state.step) == 40
  # Means over 10 steps: single steps are noisy with 16 sampled RoIs per image.
  for term in LOSS_TERMS + ('total',):
    values = np.array([h[term] for h in history])
    assert np.all(np.isfinite(values)), term
    assert values[-10:].mean() < 0.9 * values[:10].mean(), (term, values.round(3).tolist())


_EIGHT_DEVICES = textwrap.dedent('''
    import sys, jax, numpy as np
    sys.path.insert(0, {repo!r})
    from maskrcnn_jax import parallel, train
    from tests.test_train import tiny_config, _first_batch
    assert jax.device_count() == 8
    config = tiny_config({root!r})
    batch = _first_batch(config, 8)
    model, optimizer, state = train.create_train_state(config, jax.random.key(0))
    state = jax.device_get(state)  # host copy: each mesh gets its own (donated) buffers
    key = jax.random.key(1)
    one = jax.sharding.Mesh(np.array(jax.devices()[:1]), (parallel.DATA_AXIS,))
    results = []
    for mesh in (parallel.data_mesh(), one):
      step = train.jit_train_step(model, optimizer, config.train, mesh)
      new_state, metrics = step(parallel.replicate(state, mesh),
                                parallel.host_batch_to_global(batch, mesh), key)
      results.append(jax.device_get((new_state.params, metrics)))
    (params_8, metrics_8), (params_1, metrics_1) = results
    for term in ('rpn_cls', 'rpn_box', 'cls', 'box', 'mask', 'total'):
      np.testing.assert_allclose(metrics_8[term], metrics_1[term], rtol=2e-5, err_msg=term)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 params_8, params_1)
    print('ok')
''')


def test_eight_devices_give_the_same_losses_and_update_as_one(tmp_path):
  script = _EIGHT_DEVICES.format(repo=str(REPO_ROOT), root=str(tmp_path / 'shapes'))
  run_on_eight_cpu_devices(script, timeout=900)
