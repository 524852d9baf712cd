"""What each serving path costs: the exported artifacts against the jitted forward.

`scripts/benchmark.py --mode serving` exports one model (a checkpoint or seeded weights)
through every path this environment can run and times each in one process:

  jax.jit          the forward `Predictor` compiles (the baseline)
  stablehlo        `model.stablehlo` through `jax.export.deserialize(...).call`
  saved_model      the TF SavedModel's `serving_default` signature (needs TensorFlow)
  onnx             `model.onnx` on onnxruntime's CPU provider (needs jax2onnx, onnxruntime)

For each: the export time, the artifact's size on disk, the load time (deserialize,
`tf.saved_model.load`, an onnxruntime session), the first call (compilation where the
runtime compiles) and the median of the timed calls on one batch of real-sized
images; and, once, the host work a server adds around any of them
(`serving.preprocess` and `serving.postprocess`, in ms per image). Every path's outputs
are compared with the jitted forward's (valid flags and classes identical, the largest
box difference in pixels), so a fast but wrong path shows as such.
"""

import os
import shutil
import tempfile
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from benchmarks import tables
from benchmarks import timing
from maskrcnn_jax.inference import export
from maskrcnn_jax.inference import serving
from maskrcnn_jax.model import mask_rcnn

PATHS = ('jax.jit', 'stablehlo', 'saved_model', 'onnx')


def _folder_mb(path: str) -> float:
  total = 0
  for root, _, files in os.walk(path):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total / 2**20


def missing(path: str) -> str:
  """Why `path` cannot run here ('' when it can)."""
  modules = {'saved_model': ('tensorflow',), 'onnx': ('jax2onnx', 'onnxruntime')}
  for module in modules.get(path, ()):
    try:
      __import__(module)
    except ImportError:
      return f'{module} is not installed'
  return ''


def synthetic_images(config: ml_collections.ConfigDict, batch_size: int, seed: int
                     ) -> list[np.ndarray]:
  """`batch_size` random uint8 images the size of the main canvas's largest resized image."""
  rng = np.random.default_rng(seed)
  height, width = (int(v) for v in config.data.image_size)
  return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
          for _ in range(batch_size)]


def _loader(path: str, config: ml_collections.ConfigDict, variables: Any, batch_size: int,
            out_dir: str) -> tuple[Callable[[], Any], Callable[[Any], Callable]]:
  """(export: writes the artifact, load: artifact -> call(images, info) -> outputs)."""
  if path == 'jax.jit':
    model = mask_rcnn.MaskRCNN(config.model)
    forward = jax.jit(lambda images, info: model.apply(variables, images, info))
    return lambda: None, lambda _: (lambda images, info: jax.device_get(forward(images, info)))
  if path == 'stablehlo':
    def write():
      meta = export.metadata(config, batch_size, tuple(config.data.image_size))
      export.save(out_dir, export.export_stablehlo(config, variables, batch_size), meta)

    def load(_):
      program, _ = export.load(out_dir)
      return lambda images, info: export.run(program, images, info)
    return write, load
  if path == 'saved_model':
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    def load(_):
      signature = tf.saved_model.load(os.path.join(out_dir, export.SAVED_MODEL_DIR)
                                      ).signatures['serving_default']
      return lambda images, info: {k: v.numpy() for k, v in signature(
          images=tf.constant(images), image_info=tf.constant(info)).items()}
    return (lambda: export.export_saved_model(config, variables, batch_size, out_dir,
                                              platforms=('cpu',)), load)
  if path == 'onnx':
    def load(_):
      program = export.OnnxProgram(os.path.join(out_dir, export.ONNX_FILE))
      return program.call
    return lambda: export.export_onnx(config, variables, batch_size, out_dir), load
  raise ValueError(f'unknown serving path {path!r}; one of {PATHS}')


def benchmark_path(path: str, config: ml_collections.ConfigDict, variables: Any,
                   images: np.ndarray, info: np.ndarray, steps: int,
                   reference: dict[str, np.ndarray] | None, out_dir: str) -> dict[str, Any]:
  """One path's row (see the module docstring); its outputs under 'outputs'."""
  write, load = _loader(path, config, variables, images.shape[0], out_dir)
  _, export_s = timing.time_once(write)
  call, load_s = timing.time_once(lambda: load(None))
  outputs = {}
  call_timing = timing.time_calls(lambda: outputs.update(call(images, info)), steps, warmup=0)
  row = {'path': path, 'export_s': export_s if path != 'jax.jit' else None,
         'artifact_mb': _folder_mb(out_dir) if path != 'jax.jit' else None,
         'load_s': load_s, 'first_call_s': call_timing.first_call_s,
         'median_call_s': call_timing.median_s,
         'ms_per_image': 1000 * call_timing.median_s / images.shape[0],
         'outputs': {k: np.asarray(v) for k, v in outputs.items()}}
  if reference is not None:
    valid = np.asarray(reference['valid'])
    row['same_detections'] = bool(
        np.array_equal(row['outputs']['valid'], valid)
        and np.array_equal(row['outputs']['classes'], reference['classes']))
    row['max_box_difference_px'] = float(np.max(np.abs(
        np.where(valid[..., None], row['outputs']['boxes'] - reference['boxes'], 0.0)),
        initial=0.0))
  return row


def host_work_ms(config: ml_collections.ConfigDict, raw: list[np.ndarray],
                 outputs: dict[str, np.ndarray], steps: int) -> dict[str, float]:
  """Median ms per image of `serving.preprocess` and `serving.postprocess` on one batch."""
  canvas = tuple(config.data.image_size)
  infos = []

  def preprocess():
    infos[:] = [serving.preprocess(raw, config, canvas=canvas, batch_size=len(raw))[1]]

  pre = timing.time_calls(preprocess, max(steps, 1), warmup=0)
  post = timing.time_calls(lambda: serving.postprocess(outputs, [r.shape[:2] for r in raw],
                                                       infos[0], config),
                           max(steps, 1), warmup=0)
  return {'preprocess_ms_per_image': 1000 * pre.median_s / len(raw),
          'postprocess_ms_per_image': 1000 * post.median_s / len(raw)}


def run(config: ml_collections.ConfigDict, variables: Any, batch_size: int, steps: int,
        paths: tuple[str, ...] = PATHS, seed: int = 0) -> dict[str, Any]:
  """Every runnable path of `paths` on one synthetic batch; rows plus the host work."""
  raw = synthetic_images(config, batch_size, seed)
  images, info = serving.preprocess(raw, config, canvas=tuple(config.data.image_size),
                                    batch_size=batch_size)
  rows, skipped, reference = [], {}, None
  work = tempfile.mkdtemp(prefix='serving_benchmark_')
  try:
    for path in ('jax.jit',) + tuple(p for p in paths if p != 'jax.jit'):
      why = missing(path)
      if why:
        skipped[path] = why
        continue
      row = benchmark_path(path, config, variables, images, info, steps, reference,
                           os.path.join(work, path))
      if reference is None:
        reference = row['outputs']
      rows.append(row)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  host = host_work_ms(config, raw, reference, steps)
  for row in rows:
    del row['outputs']
  return {'batch_size': batch_size, 'canvas': list(config.data.image_size), 'rows': rows,
          'skipped': skipped, 'host': host}


def markdown_table(result: dict[str, Any]) -> str:
  """The rows as a Markdown table, the skipped paths and the host work under it."""
  height, width = result['canvas']
  rows = [[r['path'], tables.cell(r['export_s'], 1), tables.cell(r['artifact_mb'], 1),
           tables.cell(r['load_s'], 2), tables.cell(r['first_call_s'], 2),
           tables.cell(r['median_call_s'], 3), tables.cell(r['ms_per_image'], 1),
           tables.cell(r['same_detections'], 0) if 'same_detections' in r else 'reference',
           tables.cell(r['max_box_difference_px'], 6) if 'same_detections' in r else '-']
          for r in result['rows']]
  rows += [[path, f'not run: {why}'] + [''] * 7 for path, why in result['skipped'].items()]
  lines = [f'Batch {result["batch_size"]} on the {height} x {width} canvas, one process:', '']
  lines += tables.markdown_table(
      ['path', 'export s', 'artifact MB', 'load s', 'first call s', 'call s', 'ms / image',
       'same detections', 'max box diff px'], rows)
  host = result['host']
  lines += ['', f"Host work around any path: preprocess {host['preprocess_ms_per_image']:.1f} "
            f"ms / image, postprocess (paste into the original image) "
            f"{host['postprocess_ms_per_image']:.1f} ms / image."]
  return '\n'.join(lines)
