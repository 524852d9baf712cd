"""The train step and inference of one config, timed (`--mode train` and `--mode infer`).

  train: `train/step.py`'s `jit_train_step` on a synthetic batch (`instances` random
    boxes per image, masks filling their boxes).
  infer: `Predictor.predict_batch` on B random uint8 images (host preprocessing, device
    forward, host mask pasting), and the jitted model forward alone on device-resident
    inputs. The score threshold is 0, so every image pastes detections_per_image masks
    whatever the random weights score.

With an image size, images are unresized (square resize to their own longer side) on
that one canvas. For every compiled program the result gives what XLA says of it
(`runtime/program_stats.py`): FLOPs and temp memory per image, its while loops with and
without a static trip count and, with a peak TFLOP/s, the model FLOP utilization. Host
memory is the process's peak resident set and its growth from before the model was
built; device memory is jax's peak_bytes_in_use where the backend reports it.

Our train step runs the mask head on the static foreground sample (batch_size_per_image
* positive_fraction RoIs per image) whatever the data: `static_mask_rois`.
"""

from typing import Any

import jax
import ml_collections
import numpy as np

from benchmarks import input_pipeline
from benchmarks import tables
from benchmarks import timing
from maskrcnn_jax import config as config_lib
from maskrcnn_jax.data import examples
from maskrcnn_jax.inference import predictor as predictor_lib
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.runtime import compiler
from maskrcnn_jax.runtime import distributed
from maskrcnn_jax.runtime import program_stats
from maskrcnn_jax.train import step as step_lib

FRAMEWORK = 'maskrcnn-jax'


def load_case_config(path_and_arg: str, mode: str, batch: int,
                     image_size: tuple[int, int] | None, dtype: str | None
                     ) -> ml_collections.ConfigDict:
  """The config file (`path` or `path:arg`) for one (batch, dtype) case.

  With `image_size`, inputs are unresized `height x width` images on that one canvas;
  without, the config's own canvases and resize stay (the real-data and input modes).
  """
  path, _, arg = path_and_arg.partition(':')
  config = config_lib.load_config_file(path, arg or None)
  if image_size is not None:
    d = config.data
    height, width = image_size
    d.image_size = (height, width)
    d.resize_mode, d.min_size, d.max_size = 'square', min(height, width), max(height, width)
    for key, value in (('extra_canvases', ()), ('transpose_portrait', False)):
      if key in d:
        d[key] = value
  config.eval.pad_to_multiple = 0
  config.train.batch_size = batch
  if dtype is not None:
    config.model.dtype = dtype
  if mode == 'infer':
    config.model.roi_heads.score_threshold = 0.0
  return config


def synthetic_instances(seed: int, batch: int, height: int, width: int, num_classes: int,
                        instances: int) -> tuple[np.ndarray, np.ndarray]:
  """Random ground truth, the same in both frameworks.

  Returns:
    boxes: [batch, instances, 4] float32, x1y1x2y2 pixels, sides 10-40% of the image's.
    classes: [batch, instances] int32 in 1..num_classes.
  """
  rng = np.random.default_rng(seed)
  size = np.array([width, height], np.float32)
  sides = rng.uniform(0.1, 0.4, (batch, instances, 2)) * size
  corners = rng.uniform(0.0, 1.0, (batch, instances, 2)) * (size - sides)
  boxes = np.concatenate([corners, corners + sides], -1).astype(np.float32)
  classes = rng.integers(1, num_classes + 1, (batch, instances)).astype(np.int32)
  return boxes, classes


def synthetic_image_info(batch_size: int, config: ml_collections.ConfigDict) -> np.ndarray:
  """[B, I] image_info of unresized, unflipped images filling the canvas."""
  height, width = config.data.image_size
  info = np.zeros_like(examples.empty_batch(1, config.data)['image_info'])
  info[:, :3] = [height, width, 1.0]
  return np.repeat(info, batch_size, axis=0)


def synthetic_train_batch(config: ml_collections.ConfigDict, seed: int, instances: int
                          ) -> dict[str, np.ndarray]:
  """A batch with the batch table's shapes: random pixels, `synthetic_instances` as GT."""
  batch_size = config.train.batch_size
  height, width = config.data.image_size
  batch = examples.empty_batch(batch_size, config.data)
  n = min(instances, config.data.max_instances)
  boxes, classes = synthetic_instances(seed, batch_size, height, width,
                                       config.model.num_classes, n)
  batch['images'][:] = np.random.default_rng(seed).integers(0, 256, batch['images'].shape)
  batch['image_info'][:] = synthetic_image_info(batch_size, config)
  batch['gt_boxes'][:, :n] = boxes[:, :n]
  batch['gt_classes'][:, :n] = classes[:, :n]
  batch['gt_masks'][:, :n] = 1  # a mask filling its box, cropped to the box
  batch['image_id'][:] = np.arange(batch_size)
  return batch


def compile_timed(jitted, *args) -> tuple[Any, dict[str, Any]]:
  """`jitted` lowered and compiled for `args`, and what XLA says of the program."""
  compiled, seconds = timing.time_once(lambda: jitted.lower(*args).compile())
  return compiled, dict(program_stats.compiled_stats(compiled).to_dict(), compile_s=seconds)


def per_image_stats(stats: dict[str, Any], batch: int, median_s: float,
                    peak_tflops: float) -> dict[str, Any]:
  """FLOPs and temp memory per image, and the FLOP utilization of `peak_tflops`."""
  out = dict(stats, gflops_per_image=stats['flops'] / batch / 1e9,
             temp_mb_per_image=stats['temp_bytes'] / batch / 2**20,
             achieved_tflops=stats['flops'] / median_s / 1e12)
  if peak_tflops > 0:
    out['mfu'] = out['achieved_tflops'] / peak_tflops
  return out


def timing_row(framework: str, measured: str, measured_timing: timing.Timing,
               batch: int) -> dict[str, Any]:
  """One row of a case: who, what, the timing's JSON and images per second."""
  return dict(framework=framework, measured=measured, **measured_timing.to_json(),
              images_per_second=batch / measured_timing.median_s)


def static_mask_rois(config: ml_collections.ConfigDict) -> int:
  """RoIs per image our mask head runs on in training: the foreground sample's static size."""
  r = config.model.roi_heads
  return int(r.batch_size_per_image * r.positive_fraction)


def jax_device_peak_mb() -> float | str:
  """Peak device memory of the first local device, MiB, or 'n/a' where not reported."""
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return 'n/a' if peak is None else peak / 2**20


def _time_train(config: ml_collections.ConfigDict, steps: int, warmup: int, seed: int,
                instances: int, peak_tflops: float) -> dict[str, Any]:
  """The compiled train step on one synthetic batch: its row and program."""
  batch_size = config.train.batch_size
  mesh = distributed.data_mesh()
  model, optimizer, state = step_lib.create_train_state(config, jax.random.key(seed))
  step = step_lib.jit_train_step(model, optimizer, config.train, mesh)
  state = distributed.replicate(state, mesh)
  batch = distributed.host_batch_to_global(synthetic_train_batch(config, seed, instances),
                                           mesh)
  key = jax.random.key(seed + 1)
  compiled, stats = compile_timed(step, state, batch, key)

  def train_once():
    nonlocal state
    state, metrics = compiled(state, batch, key)
    jax.block_until_ready(metrics)

  step_timing = timing.time_calls(train_once, steps, warmup)
  return {'rows': [timing_row(FRAMEWORK, 'train step', step_timing, batch_size)],
          'programs': {'train step': per_image_stats(stats, batch_size, step_timing.median_s,
                                                     peak_tflops)},
          'mask_head_rois_per_image': static_mask_rois(config)}


def _time_infer(config: ml_collections.ConfigDict, steps: int, warmup: int, seed: int,
                peak_tflops: float) -> dict[str, Any]:
  """`Predictor.predict_batch` on random images, then the jitted forward alone."""
  batch_size = config.train.batch_size
  model = mask_rcnn.MaskRCNN(config.model)
  variables = step_lib.init_variables(model, tuple(config.data.image_size),
                                      jax.random.key(seed))
  predictor = predictor_lib.Predictor(config, variables)
  rng = np.random.default_rng(seed)
  height, width = config.data.image_size
  images = [rng.integers(0, 256, (height, width, 3), np.uint8) for _ in range(batch_size)]
  detections = []

  def predict_once():
    detections[:] = predictor.predict_batch(images)

  rows = [timing_row(FRAMEWORK, 'Predictor.predict_batch (host paste incl.)',
                     timing.time_calls(predict_once, steps, warmup), batch_size)]
  inputs = jax.device_put((np.stack(images), synthetic_image_info(batch_size, config)))
  compiled, stats = compile_timed(compiler.jit(model.apply), variables, *inputs)
  forward_timing = timing.time_calls(
      lambda: jax.block_until_ready(compiled(variables, *inputs)), steps, warmup)
  rows.append(timing_row(FRAMEWORK, 'jitted model forward', forward_timing, batch_size))
  return {'rows': rows,
          'programs': {'model forward': per_image_stats(stats, batch_size,
                                                        forward_timing.median_s,
                                                        peak_tflops)},
          'detections_per_image': float(np.mean([len(d['scores']) for d in detections]))}


def benchmark_jax(config: ml_collections.ConfigDict, mode: str, steps: int, warmup: int,
                  seed: int, instances: int, peak_tflops: float) -> dict[str, Any]:
  """One case in this process: 'rows' of timings, 'programs' (XLA's stats of each), the
  memory of this process and the device, and the mask work ('train') or the detections
  per image ('infer')."""
  before = timing.host_peak_mb()
  if mode == 'train':
    part = _time_train(config, steps, warmup, seed, instances, peak_tflops)
  else:
    part = _time_infer(config, steps, warmup, seed, peak_tflops)
  extra = {k: v for k, v in part.items() if k not in ('rows', 'programs')}
  return {'rows': part['rows'], 'programs': part['programs'], **timing.host_memory(before),
          'device_peak_mb': jax_device_peak_mb(), 'backend': jax.default_backend(),
          'device': str(jax.local_devices()[0].device_kind), **extra}


def _timing_lines(case: dict[str, Any]) -> list[str]:
  """One row per measured function of each framework, the compile time from its program."""
  rows = []
  for framework in ('jax', 'torchvision'):
    part = case.get(framework)
    if not isinstance(part, dict):
      continue
    programs = part.get('programs', {})
    for row in part['rows']:
      program = next((p for name, p in programs.items() if row['measured'].endswith(name)),
                     None)
      rows.append([row['framework'], row['measured'],
                   tables.cell(program['compile_s'] if program else None, 1),
                   tables.cell(row['first_call_s'], 2), tables.cell(row['median_s'], 3),
                   tables.cell(row['images_per_second'], 2),
                   tables.cell(part['host_peak_mb'], 0), tables.cell(part['host_growth_mb'], 0),
                   tables.cell(part['device_peak_mb'], 0)])
  return tables.markdown_table(
      ['framework', 'measured', 'compile (s)', 'first call (s)', 'median (s)', 'images/s',
       'host peak (MiB)', 'host growth (MiB)', 'device peak (MiB)'], rows)


def _program_lines(programs: dict[str, dict[str, Any]]) -> list[str]:
  """What XLA says of each compiled program, per image."""
  rows = [[name, tables.cell(p['gflops_per_image'], 1), tables.cell(p['temp_mb_per_image'], 0),
           p['while_loops_static_trip_count'], p['while_loops_dynamic_trip_count'],
           f'{p["achieved_tflops"]:.3g}', f'{p["mfu"]:.1%}' if 'mfu' in p else '-']
          for name, p in programs.items()]
  return tables.markdown_table(
      ['XLA program', 'GFLOP / image', 'temp MiB / image',
       'while loops (static trip count)', 'while loops (data-dependent)', 'TFLOP/s', 'MFU'],
      rows)


def case_table(result: dict[str, Any], case: dict[str, Any]) -> list[str]:
  """Markdown lines of one (batch, dtype) case: timings, then the compiled programs."""
  lines = [f'#### batch {case["batch"]}, {case["dtype"]}', ''] + _timing_lines(case)
  programs = case['jax'].get('programs', {})
  if programs:
    lines += [''] + _program_lines(programs)
  if result['mode'] == 'train':
    counts = [f'{name} {case[framework]["mask_head_rois_per_image"]:g}'
              for framework, name in (('jax', FRAMEWORK), ('torchvision', 'torchvision'))
              if isinstance(case.get(framework), dict)]
    lines += ['', f'{result["instances"]} ground-truth instances per image; mask head RoIs '
                  f'per image: {", ".join(counts)}.']
  if 'torchvision_over_jax' in case:
    lines += ['', f'torchvision median time / maskrcnn-jax median time: '
                  f'{case["torchvision_over_jax"]:.2f} (> 1: maskrcnn-jax is faster)']
  return lines


def markdown_table(result: dict[str, Any]) -> str:
  """A train / infer / input run as a Markdown section: a header line, then a table per
  case, then what the folder of --annotations gave."""
  size = result['image_size']
  lines = [f'### {result["config"]} {result["mode"]}'
           + (f', {size[0]}x{size[1]}' if size else ''), '',
           f'{result["date"]}; {result["machine"]}; {result["threads"]} threads; '
           f'load average before: {result["load_average"]}; '
           f'{result["steps"]} timed steps after {result["warmup"]} warm-up; '
           f'jax {result["jax_version"]}.', '']
  for case in result.get('cases', []):
    lines += case_table(result, case) + ['']
  if 'pixels' in result:
    p = result['pixels']
    lines += [f'Canvases over {p["images"]} images of the folder: padded / resized pixels '
              f'{p["padded_over_resized"]:.3f}; images per canvas: '
              + ', '.join(f'{k} {v}' for k, v in p['images_per_canvas'].items()) + '.', '']
  if 'real_data' in result:
    r = result['real_data']
    lines += [f'Real batches ({", ".join(r["canvases"])}): {r["steps"]} steps, median '
              f'{r["median_step_s"]:.3f} s a step, {r["images_per_second"]:.2f} images/s, '
              f'{r["input_wait_share"]:.1%} of the time waiting for input.', '']
  if 'input' in result:
    lines += [input_pipeline.markdown(result['input']), '']
  if 'compare_error' in result:
    lines += [result['compare_error'], '']
  return '\n'.join(lines)
