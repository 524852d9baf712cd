"""The inference forward as a serving artifact: serialized StableHLO (or ONNX) with metadata.

A fixed-shape model exports whole: uint8 images on one canvas and their image_info in;
fixed-size detections (boxes, scores, classes, mask probabilities, valid flags) out. The
host work around it (resize, transpose and pad before; transpose back, rescale and paste
after) is the plain functions of inference/serving.py, which `Predictor` calls around
its jitted forward and `predict` calls around an artifact.

An artifact is a folder:
  model.stablehlo   `jax.export` serialization of the forward with the weights inside,
                    lowered for cpu, cuda and tpu (`jax.export.deserialize(...).call`)
  metadata.json     canvas, batch, inputs, outputs, classes, preprocessing

`export_onnx` writes `model.onnx` in place of `model.stablehlo` (the same inputs, outputs
and metadata, for onnxruntime), `export_saved_model` a TF SavedModel beside the metadata.
"""

import contextlib
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from maskrcnn_jax import image_info as info_lib
from maskrcnn_jax.inference import serving
from maskrcnn_jax.model import mask_rcnn

STABLEHLO_FILE = 'model.stablehlo'
ONNX_FILE = 'model.onnx'
SAVED_MODEL_DIR = 'saved_model'
METADATA_FILE = 'metadata.json'
PLATFORMS = ('cpu', 'cuda', 'tpu')


def export_stablehlo(config: ml_collections.ConfigDict, variables: Any, batch_size: int,
                     canvas: tuple[int, int] | None = None,
                     platforms: Sequence[str] = PLATFORMS) -> jax.export.Exported:
  """`MaskRCNN(config.model)`'s inference on [batch, H, W, 3] uint8 images of a canvas.

  Args:
    config: a full config; `model` is exported, `data.image_size` is the default canvas.
    variables: {'params', 'batch_stats'}, baked into the program as constants.
    batch_size: B, the static batch of the artifact.
    canvas: (H, W) padded input size; one of the config's canvases (default the main).
    platforms: backends to lower for; the artifact runs on any of them.
  """
  model = mask_rcnn.MaskRCNN(config.model)
  forward = jax.jit(lambda images, image_info: model.apply(variables, images, image_info))
  return jax.export.export(forward, platforms=tuple(platforms))(
      *_input_specs(config, batch_size, canvas))


def _input_specs(config: ml_collections.ConfigDict, batch_size: int,
                 canvas: tuple[int, int] | None) -> tuple[jax.ShapeDtypeStruct, ...]:
  """images [B, H, W, 3] uint8 and image_info [B, 5] float32 on the canvas (or the main)."""
  height, width = canvas or tuple(config.data.image_size)
  return (jax.ShapeDtypeStruct((batch_size, height, width, 3), jnp.uint8),
          jax.ShapeDtypeStruct((batch_size, info_lib.SIZE), jnp.float32))


def metadata(config: ml_collections.ConfigDict, batch_size: int, canvas: tuple[int, int],
             category_names: Sequence[str] | None = None,
             category_ids: Sequence[int] | None = None,
             artifact_format: str = 'stablehlo') -> dict[str, Any]:
  """What a server needs beside the program (stablehlo, saved_model or onnx), as JSON."""
  d, m = config.data, config.model
  height, width = canvas
  detections = m.roi_heads.detections_per_image
  resolution = m.mask_head.resolution
  return {
      'format': artifact_format,
      'batch_size': batch_size,
      'canvas': [height, width],
      'inputs': {
          'images': f'[{batch_size}, {height}, {width}, 3] uint8 RGB, resized and zero-padded '
                    'at the bottom and right (normalized inside the program)',
          'image_info': f'[{batch_size}, {info_lib.SIZE}] float32: resized height, resized '
                        'width (canvas frame), scale, flipped, transposed',
      },
      'outputs': {
          'boxes': f'[{batch_size}, {detections}, 4] float32 x1y1x2y2 in the canvas frame',
          'scores': f'[{batch_size}, {detections}] float32, descending',
          'classes': f'[{batch_size}, {detections}] int32 in 1..{m.num_classes}, 0 if invalid',
          'masks': f'[{batch_size}, {detections}, {resolution}, {resolution}] float32 '
                   'probabilities in each box',
          'valid': f'[{batch_size}, {detections}] bool',
      },
      'num_classes': m.num_classes,
      'category_names': list(category_names) if category_names is not None else None,
      'category_ids': [int(i) for i in category_ids] if category_ids is not None else None,
      'preprocessing': {
          'resize_mode': d.resize_mode, 'min_size': d.min_size, 'max_size': d.max_size,
          'resize_backend': d.resize_backend,
          'transpose_portrait': bool(d.get('transpose_portrait', False)),
          'pixel_mean_rgb': list(m.pixel_mean_rgb), 'pixel_std_rgb': list(m.pixel_std_rgb),
      },
      'mask_threshold': config.eval.mask_threshold,
      'mask_paste': config.eval.mask_paste,
  }


def write_metadata(out_dir: str, meta: dict[str, Any]) -> None:
  """Writes `metadata.json` into `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, METADATA_FILE), 'w') as f:
    json.dump(meta, f, indent=1)


def save(out_dir: str, exported: jax.export.Exported, meta: dict[str, Any]) -> None:
  """Writes `model.stablehlo` and `metadata.json` into `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, STABLEHLO_FILE), 'wb') as f:
    f.write(exported.serialize())
  write_metadata(out_dir, meta)


class OnnxProgram:
  """`model.onnx` in an onnxruntime session, called as `jax.export.Exported` is."""

  def __init__(self, path: str, providers: Sequence[str] = ('CPUExecutionProvider',)):
    try:
      import onnxruntime  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(f'{path} needs onnxruntime: pip install onnxruntime ({e})') from e
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: not its notes on initializers it prunes
    self.session = onnxruntime.InferenceSession(path, options, providers=list(providers))
    self.output_names = [output.name for output in self.session.get_outputs()]

  def call(self, images: np.ndarray, image_info: np.ndarray) -> dict[str, np.ndarray]:
    """[B, H, W, 3] uint8 images, [B, 5] float32 image_info -> the outputs by name."""
    outputs = self.session.run(self.output_names, {
        'images': np.asarray(images, np.uint8),
        'image_info': np.asarray(image_info, np.float32)})
    return dict(zip(self.output_names, outputs))


Program = jax.export.Exported | OnnxProgram


def load(out_dir: str) -> tuple[Program, dict[str, Any]]:
  """The artifact in `out_dir`: call it as `program.call(images, image_info)`.

  `model.stablehlo` deserializes to a `jax.export.Exported`; `model.onnx` (from
  `export_onnx`) opens as an `OnnxProgram` on onnxruntime's CPU provider.
  """
  path = os.path.join(out_dir, STABLEHLO_FILE)
  onnx_path = os.path.join(out_dir, ONNX_FILE)
  if os.path.isfile(path):
    with open(path, 'rb') as f:
      program = jax.export.deserialize(bytearray(f.read()))
  elif os.path.isfile(onnx_path):
    program = OnnxProgram(onnx_path)
  else:
    raise FileNotFoundError(f'{out_dir}: no {STABLEHLO_FILE} or {ONNX_FILE} (not an exported '
                            'model)')
  with open(os.path.join(out_dir, METADATA_FILE)) as f:
    return program, json.load(f)


def run(program: Program, images: np.ndarray, image_info: np.ndarray
        ) -> dict[str, np.ndarray]:
  """The artifact on one batch, as NumPy."""
  return jax.device_get(program.call(np.asarray(images, np.uint8),
                                     np.asarray(image_info, np.float32)))


def predict(program: Program, meta: dict[str, Any],
            images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
  """Raw [H, W, 3] uint8 RGB images -> detections in original pixels, through an artifact.

  What a server does with nothing but the artifact folder: `serving.preprocess` onto the
  artifact's canvas in batches of its size (the last one filled with empty slots), the
  program, then `serving.postprocess`. Returns per image what `Predictor` returns.
  """
  config = serving.config_from_metadata(meta)
  batch_size, canvas = meta['batch_size'], tuple(meta['canvas'])
  results = []
  for start in range(0, len(images), batch_size):
    chunk = [serving.check_image(image, f'image {start + i}')
             for i, image in enumerate(images[start:start + batch_size])]
    batch, infos = serving.preprocess(chunk, config, canvas=canvas, batch_size=batch_size)
    outputs = run(program, batch, infos)
    results += serving.postprocess(outputs, [image.shape[:2] for image in chunk], infos,
                                   config, meta.get('category_ids'))
  return results


@contextlib.contextmanager
def _stablehlo_readable_by_tensorflow():
  """Serializes StableHLO for consumers 12 weeks old instead of jax's default 4.

  jax 0.10 writes StableHLO 1.15 (its 4-week window); TensorFlow 2.21's XlaCallModule
  reads up to 1.13.7, the 12-week window. jax.export has no public switch for this, so
  the requirement is swapped inside jax's exporter for the duration of one export (a
  private hook: if it moves, the export runs unchanged and TensorFlow names the version).
  """
  from jax._src.export import _export  # pylint: disable=import-outside-toplevel
  hlo = getattr(_export, 'hlo', None)
  if hlo is None or not hasattr(hlo, 'StablehloCompatibilityRequirement'):
    yield
    return

  class _Week12:
    def __getattr__(self, name):
      return getattr(hlo, name)

    def get_version_from_compatibility_requirement(self, _):
      return hlo.get_version_from_compatibility_requirement(
          hlo.StablehloCompatibilityRequirement.WEEK_12)

  _export.hlo = _Week12()
  try:
    yield
  finally:
    _export.hlo = hlo


def export_saved_model(config: ml_collections.ConfigDict, variables: Any, batch_size: int,
                       out_dir: str, canvas: tuple[int, int] | None = None,
                       platforms: Sequence[str] = ('cpu', 'cuda')) -> str:
  """A TF SavedModel of the same forward (jax2tf, StableHLO inside XlaCallModule).

  Needs TensorFlow (not a dependency of the package). The signature `serving_default`
  takes `images` [B, H, W, 3] uint8 and `image_info` [B, 5] float32 and returns the
  outputs of `export_stablehlo`. Returns the SavedModel's directory.
  """
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError('--format saved_model needs TensorFlow: pip install tensorflow-cpu '
                      f'({e})') from e
  height, width = canvas or tuple(config.data.image_size)
  model = mask_rcnn.MaskRCNN(config.model)
  converted = jax2tf.convert(lambda images, image_info: model.apply(variables, images,
                                                                    image_info),
                             native_serialization_platforms=tuple(platforms),
                             with_gradient=False)
  serve = tf.function(converted, autograph=False, input_signature=[
      tf.TensorSpec((batch_size, height, width, 3), tf.uint8, name='images'),
      tf.TensorSpec((batch_size, info_lib.SIZE), tf.float32, name='image_info')])
  module = tf.Module()
  module.serve = serve
  path = os.path.join(out_dir, SAVED_MODEL_DIR)
  with _stablehlo_readable_by_tensorflow():
    tf.saved_model.save(module, path, signatures=serve.get_concrete_function())
  return path


def export_onnx(config: ml_collections.ConfigDict, variables: Any, batch_size: int,
                out_dir: str, canvas: tuple[int, int] | None = None) -> str:
  """An ONNX model of the same forward (jax2onnx), for onnxruntime.

  Needs jax2onnx (not a dependency of the package: pip install '.[onnx]'). The model
  takes `images` [B, H, W, 3] uint8 and `image_info` [B, 5] float32 and returns the
  outputs of `export_stablehlo` under their names; `OnnxProgram` (or `load`) runs it.
  Weights are initializers, those over 1 MB in `model.onnx.data` beside it (keep the two
  together). Returns the path of `model.onnx`.

  onnxruntime's convolutions round differently from XLA's (RPN logits within ~4e-8), so
  two candidates whose scores are closer than that may rank the other way round: the
  sorts and top-k themselves break exact ties as XLA does (lower index first).
  """
  try:
    import jax2onnx  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"--format onnx needs jax2onnx: pip install '.[onnx]' ({e})") from e
  model = mask_rcnn.MaskRCNN(config.model)

  def forward(images, image_info):
    return model.apply(variables, images, image_info)

  inputs = _input_specs(config, batch_size, canvas)
  # jax2onnx flattens the output dict as jax does (keys sorted); name the outputs so.
  output_names = [str(path[0].key) for path, _ in
                  jax.tree_util.tree_flatten_with_path(jax.eval_shape(forward, *inputs))[0]]
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, ONNX_FILE)
  jax2onnx.to_onnx(forward, inputs, model_name='mask_rcnn', return_mode='file',
                   output_path=path, input_names=['images', 'image_info'],
                   output_names=output_names)
  return path
