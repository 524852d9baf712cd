"""Mask R-CNN with FPN in JAX/Flax: fixed shapes, one jitted function per step."""


def __getattr__(name):
  # Lazy, so that host-side subpackages (maskrcnn_jax.data) never import jax.
  if name == 'Predictor':
    from maskrcnn_jax.predictor import Predictor  # pylint: disable=import-outside-toplevel
    return Predictor
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
