"""Mask R-CNN with FPN in JAX/Flax: fixed shapes, one jitted function per step."""


def __getattr__(name):
  # Lazy, so that host-side subpackages (maskrcnn_jax.data) never import jax.
  if name == 'Predictor':
    # pylint: disable-next=import-outside-toplevel
    from maskrcnn_jax.inference.predictor import Predictor
    return Predictor
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
