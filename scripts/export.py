r"""Exports a checkpoint's inference forward for serving (maskrcnn_jax/inference/export.py).

  python scripts/export.py --checkpoint runs/r50_1x --format stablehlo --batch 8 \
      --out exported/

`--checkpoint` is what scripts/evaluate.py takes; a training run's checkpoint brings the
config the run saved, so --config is optional there (`--config.<key>=<value>` overrides
apply on top of it; a --config given replaces it, with a note naming the keys where
they differ), and converted weights need --config. A checkpoint whose variables do not
fit the config's model is refused before anything is traced. Writes <out>/model.stablehlo
(the forward at one canvas and batch, weights inside, for cpu, cuda and tpu) and
<out>/metadata.json; `--format saved_model` writes <out>/saved_model (TensorFlow) and
`--format onnx` <out>/model.onnx (jax2onnx, for onnxruntime) in its place. `--canvas HxW`
picks another of the config's canvases than data.image_size. Category names come from
`--annotations` (a COCO JSON) or from what the training run saved in its workdir. Serve
it with
  exported = jax.export.deserialize(open('model.stablehlo', 'rb').read())
  outputs = exported.call(images_uint8, image_info)
around the host steps of `Predictor.preprocess` and `Predictor.predict_batch`, or
`export.predict(*export.load(out), images)` (either file format).
"""

import os

from absl import app
from absl import flags

from maskrcnn_jax import checkpoint
from maskrcnn_jax import cli
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import transforms
from maskrcnn_jax.inference import export
from maskrcnn_jax.inference import predictor
from maskrcnn_jax.train import preflight
from maskrcnn_jax.train import workdir as workdir_lib

cli.define_config_flag()  # read by cli.run_config
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'a checkpoint directory (see above)')
_FORMAT = flags.DEFINE_enum('format', 'stablehlo', ['stablehlo', 'saved_model', 'onnx'],
                            'artifact format (saved_model needs TensorFlow, onnx jax2onnx)')
_BATCH = flags.DEFINE_integer('batch', 1, 'images per call of the artifact')
_CANVAS = flags.DEFINE_string('canvas', '', 'HxW, one of the config canvases (default: '
                              'data.image_size)')
_ANNOTATIONS = flags.DEFINE_string('annotations', '', 'COCO JSON naming the categories')
_OUT = flags.DEFINE_string('out', None, 'output directory')


def parse_canvas(text: str, config) -> tuple[int, int]:
  """'HxW' -> (H, W), one of the config's canvases; '' -> the main one."""
  canvases = [tuple(c) for c in transforms.canvas_sizes(config.data)]
  if not text:
    return canvases[0]
  try:
    canvas = tuple(int(v) for v in text.lower().split('x'))
  except ValueError:
    canvas = ()
  if canvas not in canvases:
    raise ValueError(f'--canvas must be one of the config canvases '
                         f'{", ".join(f"{h}x{w}" for h, w in canvases)}; got {text!r}')
  return canvas


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _CHECKPOINT.value or not _OUT.value:
    raise app.UsageError('--checkpoint and --out are required')
  if _BATCH.value <= 0:
    raise app.UsageError(f'--batch must be positive; got {_BATCH.value}')
  config = cli.run_config(_CHECKPOINT.value)
  preflight.check_canvases(config)
  canvas = parse_canvas(_CANVAS.value, config)
  ids = names = None
  categories = (coco.read_categories(_ANNOTATIONS.value) if _ANNOTATIONS.value
                else workdir_lib.find_categories(_CHECKPOINT.value))
  if categories is not None:
    ids, names = categories
    coco.check_num_classes(config.model.num_classes, ids,
                           _ANNOTATIONS.value or _CHECKPOINT.value)
  variables = checkpoint.load_variables(_CHECKPOINT.value)
  predictor.check_variables(config, variables, _CHECKPOINT.value)
  meta = export.metadata(config, _BATCH.value, canvas, names, ids, _FORMAT.value)
  if _FORMAT.value in ('saved_model', 'onnx'):
    write = export.export_saved_model if _FORMAT.value == 'saved_model' else export.export_onnx
    path = write(config, variables, _BATCH.value, _OUT.value, canvas)
    export.write_metadata(_OUT.value, meta)
    print(f'wrote {path} (batch {_BATCH.value}, canvas {canvas[0]}x{canvas[1]})')
    return
  exported = export.export_stablehlo(config, variables, _BATCH.value, canvas)
  export.save(_OUT.value, exported, meta)
  print(f'wrote {os.path.join(_OUT.value, export.STABLEHLO_FILE)} '
        f'(batch {_BATCH.value}, canvas {canvas[0]}x{canvas[1]}, {", ".join(export.PLATFORMS)})')


if __name__ == '__main__':
  cli.run(main)
