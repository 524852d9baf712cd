"""Times a config's train step, inference or input pipeline, optionally beside torchvision.

  python scripts/benchmark.py --config configs/maskrcnn_r50_fpn_1x.py --mode train \
      --batch 1,8 --dtype bfloat16,float32 --image-size 512x512 --steps 5 --warmup 1 \
      --compare torchvision --peak-tflops 990 --output bench.json --markdown docs/benchmarks.md

One run measures every (batch, dtype) case. Each measured function is compiled first
(`compile_s`), then called once (`first_call_s`), `--warmup` untimed times, then `--steps`
timed times; the table gives the median. Modes:
  train: `train/step.py`'s `jit_train_step` on a synthetic batch (`--instances` random boxes per
    image, masks filling their boxes) with data.image_size set to the given size; with
    `--annotations/--images`, also on real batches from that COCO-format folder, timing
    how much of each step waited for input.
  infer: `Predictor.predict_batch` on B random uint8 images of the given size (host
    preprocessing, device forward, host mask pasting), and the jitted model forward
    alone on device-resident inputs. Images are not resized (square resize to their own
    longer side) and the score threshold is 0, so every image pastes
    detections_per_image masks whatever the random weights score.
  input: the input pipeline alone over `--annotations/--images` (images/s with 1 and
    `--workers` processes, bytes per image, seconds per stage).
  eval: evaluation's host side and COCOeval (maskrcnn_jax/eval_benchmark.py, no
    --config): paste + RLE images/s at 100 detections per image on 480 x 640 images, in
    this process and in 1 and `--workers` processes (started before the clock), and
    COCOeval seconds of `--eval-cocoeval-images` synthetic images (jittered ground truth)
    per engine, bbox and segm one after the other and at once (one process each).
  serving: what each serving path costs (maskrcnn_jax/serving_benchmark.py): the jitted
    forward, StableHLO through jax.export, the TF SavedModel and ONNX on onnxruntime
    (those two where installed) on one batch of `--batch` random images of the config's
    main canvas: export, size, load, first call, median call, the host pre- and
    post-processing around them, and each path's detections against the jitted ones.
    Weights: `--checkpoint`, else seeded random ones.
For every compiled program the JSON and the table give what XLA says of it
(maskrcnn_jax/runtime/program_stats.py): FLOPs and temp memory per image, and its while loops with
and without a static trip count; with `--peak-tflops`, the model FLOP utilization
(FLOPs per second over that peak). With `--annotations`, the padded / resized pixel
ratio of the config's canvases over that folder (evaluation-scale resize).
Host memory is the process's peak resident set (VmHWM, else getrusage maxrss) and its
growth from before the model was built (after the imports); device memory is jax's
peak_bytes_in_use where the backend reports it.

--compare torchvision measures torchvision's Mask R-CNN with the same depth, classes,
frozen stages (FrozenBatchNorm, as with an ImageNet backbone), RPN/RoI counts and input
size, in a child process of its own (so its memory is its own) using the same number of
threads: train = forward + backward + SGD step in train mode on the same synthetic
targets, infer = eval-mode forward including its mask pasting; bfloat16 cases run it
under torch.autocast. Needs torch and torchvision importable; the package itself never
imports torch.

The two train steps do different amounts of mask work. Ours runs the mask head on the
static foreground sample (batch_size_per_image * positive_fraction: 128 RoIs per image
in the COCO configs) whatever the data; torchvision runs it on the positive proposals it
found. With random weights those are about the ground-truth boxes themselves, so
`--instances` sets torchvision's mask work; both counts are reported.
"""

import argparse
import collections
import datetime
import importlib.util
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

# benchmarks/ lives beside scripts/, outside the installed package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import input_pipeline as input_benchmark  # pylint: disable=wrong-import-position
from maskrcnn_jax import config as config_lib
from maskrcnn_jax.data import coco
from maskrcnn_jax.data import examples
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.data import transforms
from maskrcnn_jax.inference.predictor import Predictor
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.runtime import compiler
from maskrcnn_jax.runtime import distributed
from maskrcnn_jax.runtime import program_stats
from maskrcnn_jax.train import step as step_lib


def parse_image_size(text: str) -> tuple[int, int]:
  """'HxW' -> (H, W)."""
  try:
    height, width = (int(v) for v in text.lower().split('x'))
  except ValueError:
    raise argparse.ArgumentTypeError(f'image size must look like 512x512; got {text!r}')
  if height <= 0 or width <= 0:
    raise argparse.ArgumentTypeError(f'image size must be positive; got {text!r}')
  return height, width


def parse_batches(text: str) -> list[int]:
  """'1,8' -> [1, 8]."""
  try:
    batches = [int(v) for v in text.split(',')]
  except ValueError:
    raise argparse.ArgumentTypeError(f'--batch takes sizes like 1 or 1,8; got {text!r}')
  if not batches or min(batches) <= 0:
    raise argparse.ArgumentTypeError(f'--batch sizes must be positive; got {text!r}')
  return batches


def parse_dtypes(text: str) -> list[str]:
  """'bfloat16,float32' -> ['bfloat16', 'float32']."""
  dtypes = text.split(',')
  unknown = [d for d in dtypes if d not in ('float32', 'bfloat16')]
  if unknown:
    raise argparse.ArgumentTypeError(f'--dtype takes float32 and/or bfloat16; got {text!r}')
  return dtypes


def load_benchmark_config(path_and_arg: str, mode: str, batch: int,
                          image_size: tuple[int, int] | None, dtype: str | None
                          ) -> ml_collections.ConfigDict:
  """The config file (`path` or `path:arg`) for one case.

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


def padded_pixel_ratio(data_config: ml_collections.ConfigDict,
                       sizes: list[tuple[int, int]]) -> dict[str, Any]:
  """Canvas pixels over resized-image pixels at evaluation scale, over original sizes."""
  padded = resized = 0
  canvases = collections.Counter()
  for height, width in sizes:
    canvas = transforms.choose_canvas(height, width, data_config, train=False)
    new_h, new_w, _ = transforms.resize_shape(height, width, data_config.resize_mode,
                                              data_config.min_size, data_config.max_size)
    padded += canvas.height * canvas.width
    resized += new_h * new_w
    canvases[f'{canvas.height}x{canvas.width}'] += 1
  return {'images': len(sizes), 'padded_over_resized': padded / resized,
          'images_per_canvas': dict(canvases)}


def compile_timed(jitted, *args) -> tuple[Any, dict[str, Any]]:
  """`jitted` lowered and compiled for `args`, and what XLA says of the program."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - start
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


def time_calls(fn: Callable[[], Any], steps: int, warmup: int) -> dict[str, Any]:
  """Times `fn` (which must block until its work is done): first call, then medians."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return {'first_call_s': first, 'median_s': statistics.median(times), 'times_s': times}


def host_peak_mb() -> float:
  """This process's peak resident set so far, MiB.

  Linux's VmHWM where there is one: getrusage's maxrss survives exec, so a spawned child
  would start from its parent's peak. Both are in KiB.
  """
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def jax_device_peak_mb() -> float | str:
  """Peak device memory of the first local device, MiB, or 'n/a' where not reported."""
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return 'n/a' if peak is None else peak / 2**20


def _row(framework: str, measured: str, timing: dict[str, Any], batch: int) -> dict[str, Any]:
  return dict(framework=framework, measured=measured, **timing,
              images_per_second=batch / timing['median_s'])


def static_mask_rois(config: ml_collections.ConfigDict) -> int:
  """RoIs per image our mask head runs on in training: the foreground sample's static size."""
  r = config.model.roi_heads
  return int(r.batch_size_per_image * r.positive_fraction)


def benchmark_jax(config: ml_collections.ConfigDict, mode: str, steps: int, warmup: int,
                  seed: int, instances: int, peak_tflops: float) -> dict[str, Any]:
  """Rows of timings, compiled-program stats and the memory of this process."""
  before = host_peak_mb()
  batch_size = config.train.batch_size
  rows, programs = [], {}
  if mode == 'train':
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

    timing = time_calls(train_once, steps, warmup)
    rows.append(_row('maskrcnn-jax', 'train step', timing, batch_size))
    programs['train step'] = per_image_stats(stats, batch_size, timing['median_s'],
                                             peak_tflops)
    extra = {'mask_head_rois_per_image': static_mask_rois(config)}
  else:
    model = mask_rcnn.MaskRCNN(config.model)
    variables = step_lib.init_variables(model, tuple(config.data.image_size),
                                        jax.random.key(seed))
    predictor = Predictor(config, variables)
    rng = np.random.default_rng(seed)
    height, width = config.data.image_size
    images = [rng.integers(0, 256, (height, width, 3), np.uint8) for _ in range(batch_size)]
    detections = []

    def predict_once():
      detections[:] = predictor.predict_batch(images)

    rows.append(_row('maskrcnn-jax', 'Predictor.predict_batch (host paste incl.)',
                     time_calls(predict_once, steps, warmup), batch_size))
    extra = {'detections_per_image': float(np.mean([len(d['scores']) for d in detections]))}
    inputs = jax.device_put((np.stack(images), synthetic_image_info(batch_size, config)))
    forward = compiler.jit(model.apply)
    compiled, stats = compile_timed(forward, variables, *inputs)
    timing = time_calls(lambda: jax.block_until_ready(compiled(variables, *inputs)),
                        steps, warmup)
    rows.append(_row('maskrcnn-jax', 'jitted model forward', timing, batch_size))
    programs['model forward'] = per_image_stats(stats, batch_size, timing['median_s'],
                                                peak_tflops)
  peak = host_peak_mb()
  return {'rows': rows, 'programs': programs, 'host_peak_mb': peak,
          'host_growth_mb': peak - before, 'device_peak_mb': jax_device_peak_mb(),
          'backend': jax.default_backend(), 'device': str(jax.local_devices()[0].device_kind),
          **extra}


def benchmark_real_train(config: ml_collections.ConfigDict, annotations: str, images: str,
                         steps: int, seed: int) -> dict[str, Any]:
  """Train steps on batches from a COCO-format folder: how long each waited for input.

  One untimed step per canvas compiles first; then `steps` steps, each the wait for its
  batch (`next(batches)`) plus the device step (dispatch until its metrics are ready).
  """
  dataset = coco.load_coco(annotations, images, filter_empty=True)
  mesh = distributed.data_mesh()
  model, optimizer, state = step_lib.create_train_state(config, jax.random.key(seed))
  step = step_lib.jit_train_step(model, optimizer, config.train, mesh)
  state = distributed.replicate(state, mesh)
  key = jax.random.key(seed + 1)
  waits, totals, shapes = [], [], set()
  with pipeline.Batches(dataset, config.data, config.train.batch_size, train=True,
                        seed=seed) as batches:
    while len(totals) < steps:
      start = time.perf_counter()
      host_batch = next(batches)
      waited = time.perf_counter() - start
      shape = host_batch['images'].shape
      state, metrics = step(state, distributed.host_batch_to_global(host_batch, mesh), key)
      jax.block_until_ready(metrics)
      if shape in shapes:  # a new canvas compiled in this step: not timed
        waits.append(waited)
        totals.append(time.perf_counter() - start)
      shapes.add(shape)
  return {'steps': steps, 'canvases': sorted(f'{h}x{w}' for _, h, w, _ in shapes),
          'median_step_s': statistics.median(totals),
          'input_wait_share': sum(waits) / sum(totals),
          'images_per_second': config.train.batch_size * len(totals) / sum(totals)}


def benchmark_torchvision(config_dict: dict[str, Any], mode: str, steps: int, warmup: int,
                          seed: int, threads: int, use_cuda: bool, instances: int
                          ) -> dict[str, Any]:
  """Like `benchmark_jax` for torchvision's Mask R-CNN; run in a process of its own.

  model.dtype bfloat16 runs the forward under torch.autocast (float32 parameters, as ours).
  """
  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel
  from torchvision.models.detection import backbone_utils  # pylint: disable=import-outside-toplevel

  before = host_peak_mb()  # after the imports, as for maskrcnn-jax
  torch.set_num_threads(threads)
  torch.manual_seed(seed)
  m, d = config_dict['model'], config_dict['data']
  batch_size = config_dict['train']['batch_size']
  height, width = d['image_size']
  device = torch.device('cuda' if use_cuda else 'cpu')
  autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16,
                                    enabled=m['dtype'] == 'bfloat16')
  # Frozen BN and frozen early stages as when starting from an ImageNet backbone;
  # maskrcnn_resnet50_fpn(weights_backbone=None) would train plain BatchNorm everywhere.
  backbone = backbone_utils.resnet_fpn_backbone(
      backbone_name=f'resnet{m["backbone"]["depth"]}', weights=None,
      trainable_layers=5 - m['backbone']['freeze_at'])
  model = torchvision.models.detection.MaskRCNN(
      backbone, num_classes=m['num_classes'] + 1, min_size=min(height, width),
      max_size=max(height, width),
      rpn_pre_nms_top_n_train=m['rpn']['pre_nms_topk_train'],
      rpn_pre_nms_top_n_test=m['rpn']['pre_nms_topk_test'],
      rpn_post_nms_top_n_train=m['rpn']['post_nms_topk_train'],
      rpn_post_nms_top_n_test=m['rpn']['post_nms_topk_test'],
      rpn_batch_size_per_image=m['rpn']['batch_size_per_image'],
      box_batch_size_per_image=m['roi_heads']['batch_size_per_image'],
      box_score_thresh=m['roi_heads']['score_threshold'],
      box_detections_per_img=m['roi_heads']['detections_per_image']).to(device)
  rng = np.random.default_rng(seed)
  extra = {}
  if mode == 'train':
    boxes, classes = synthetic_instances(seed, batch_size, height, width, m['num_classes'],
                                         min(instances, d['max_instances']))
    images = [torch.from_numpy(rng.uniform(0, 1, (3, height, width)).astype(np.float32)
                               ).to(device) for _ in range(batch_size)]
    targets = []
    for b in range(batch_size):
      masks = np.zeros((len(boxes[b]), height, width), np.uint8)
      for i, (x1, y1, x2, y2) in enumerate(boxes[b].round().astype(int)):
        masks[i, y1:y2, x1:x2] = 1
      targets.append({'boxes': torch.from_numpy(boxes[b]).to(device),
                      'labels': torch.from_numpy(classes[b].astype(np.int64)).to(device),
                      'masks': torch.from_numpy(masks).to(device)})
    t = config_dict['train']
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                                lr=t['base_lr'], momentum=t['momentum'],
                                weight_decay=t['weight_decay'])
    model.train()
    # torchvision runs its mask head on each image's positive proposals only: count them.
    mask_rois = []
    model.roi_heads.mask_head.register_forward_hook(
        lambda module, inputs, output: mask_rois.append(inputs[0].shape[0]))

    def train_once():
      with autocast():
        losses = model(images, targets)
      optimizer.zero_grad()
      sum(losses.values()).backward()
      optimizer.step()
      if use_cuda:
        torch.cuda.synchronize()

    rows = [_row('torchvision', 'train step', time_calls(train_once, steps, warmup),
                 batch_size)]
    extra['mask_head_rois_per_image'] = float(np.mean(mask_rois[-steps:])) / batch_size
  else:
    images = [rng.integers(0, 256, (height, width, 3), np.uint8) for _ in range(batch_size)]
    model.eval()
    outputs = []

    @torch.no_grad()
    def predict_once():
      tensors = [torch.from_numpy(i).to(device).permute(2, 0, 1).float() / 255 for i in images]
      with autocast():
        outputs[:] = model(tensors)
      if use_cuda:
        torch.cuda.synchronize()

    rows = [_row('torchvision', 'eval forward (paste incl.)',
                 time_calls(predict_once, steps, warmup), batch_size)]
    extra['detections_per_image'] = float(np.mean([len(o['scores']) for o in outputs]))
  peak = host_peak_mb()
  return {'rows': rows, 'host_peak_mb': peak, 'host_growth_mb': peak - before,
          'device_peak_mb': torch.cuda.max_memory_allocated() / 2**20 if use_cuda else 'n/a',
          'torch_version': torch.__version__, 'torchvision_version': torchvision.__version__,
          'threads': torch.get_num_threads(), **extra}


def torchvision_missing() -> str:
  """Why torch/torchvision cannot be used here, or '' when they can."""
  missing = [n for n in ('torch', 'torchvision') if importlib.util.find_spec(n) is None]
  return (f'--compare torchvision needs {" and ".join(missing)} importable by '
          f'{sys.executable}; skipping the comparison') if missing else ''


def cpu_name() -> str:
  """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _format(value: Any, digits: int) -> str:
  return value if isinstance(value, str) else f'{value:.{digits}f}'


def case_table(result: dict[str, Any], case: dict[str, Any]) -> list[str]:
  """Markdown lines of one (batch, dtype) case: timings, then the compiled programs."""
  lines = [f'#### batch {case["batch"]}, {case["dtype"]}', '',
           '| framework | measured | compile (s) | first call (s) | median (s) | images/s '
           '| host peak (MiB) | host growth (MiB) | device peak (MiB) |',
           '|---|---|---|---|---|---|---|---|---|']
  for framework in ('jax', 'torchvision'):
    part = case.get(framework)
    if not isinstance(part, dict):
      continue
    programs = part.get('programs', {})
    for row in part['rows']:
      program = next((p for name, p in programs.items() if row['measured'].endswith(name)),
                     None)
      compile_s = f'{program["compile_s"]:.1f}' if program else '-'
      lines.append(
          f'| {row["framework"]} | {row["measured"]} | {compile_s} '
          f'| {row["first_call_s"]:.2f} | {row["median_s"]:.3f} '
          f'| {row["images_per_second"]:.2f} | {part["host_peak_mb"]:.0f} '
          f'| {part["host_growth_mb"]:.0f} | {_format(part["device_peak_mb"], 0)} |')
  programs = case['jax'].get('programs', {})
  if programs:
    lines += ['', '| XLA program | GFLOP / image | temp MiB / image | while loops (static '
                  'trip count) | while loops (data-dependent) | TFLOP/s | MFU |',
              '|---|---|---|---|---|---|---|']
    for name, p in programs.items():
      mfu = f'{p["mfu"]:.1%}' if 'mfu' in p else '-'
      lines.append(f'| {name} | {p["gflops_per_image"]:.1f} | {p["temp_mb_per_image"]:.0f} '
                   f'| {p["while_loops_static_trip_count"]} '
                   f'| {p["while_loops_dynamic_trip_count"]} '
                   f'| {p["achieved_tflops"]:.3g} | {mfu} |')
  if result['mode'] == 'train':
    counts = [f'{name} {case[framework]["mask_head_rois_per_image"]:g}'
              for framework, name in (('jax', 'maskrcnn-jax'), ('torchvision', 'torchvision'))
              if isinstance(case.get(framework), dict)]
    lines += ['', f'{result["instances"]} ground-truth instances per image; mask head RoIs '
                  f'per image: {", ".join(counts)}.']
  if 'torchvision_over_jax' in case:
    lines += ['', f'torchvision median time / maskrcnn-jax median time: '
                  f'{case["torchvision_over_jax"]:.2f} (> 1: maskrcnn-jax is faster)']
  return lines


def markdown_table(result: dict[str, Any]) -> str:
  """The result as a Markdown section: a header line, then a table per case."""
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
    lines += [input_benchmark.markdown(result['input']), '']
  if 'compare_error' in result:
    lines += [result['compare_error'], '']
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='',
                      help='configs/X.py, or configs/X.py:arg (all modes but eval)')
  parser.add_argument('--mode', choices=('train', 'infer', 'input', 'eval', 'serving'),
                      required=True)
  parser.add_argument('--batch', type=parse_batches, default=[1],
                      help='images per step; several cases: 1,8')
  parser.add_argument('--dtype', type=parse_dtypes, default=None,
                      help="compute dtype(s): float32 | bfloat16 | both 'bfloat16,float32' "
                           '(default: the config\'s model.dtype)')
  parser.add_argument('--image-size', type=parse_image_size, default=None,
                      help='HxW of the synthetic images (padded input size); default: the '
                           "config's data.image_size")
  parser.add_argument('--steps', type=int, default=10, help='timed calls')
  parser.add_argument('--warmup', type=int, default=2, help='untimed calls after the first')
  parser.add_argument('--compare', choices=('torchvision',), default=None)
  parser.add_argument('--threads', type=int, default=0,
                      help='CPU cores for both frameworks (0: all this process may use)')
  parser.add_argument('--instances', type=int, default=3,
                      help='synthetic ground-truth instances per training image')
  parser.add_argument('--peak-tflops', type=float, default=0.0,
                      help='the accelerator\'s peak TFLOP/s in the compute dtype, for MFU')
  parser.add_argument('--annotations', default='',
                      help='a COCO-format annotation file: pixel ratio of the canvases, real '
                           'train batches (train), the data of --mode input')
  parser.add_argument('--images', default='', help='the image folder of --annotations')
  parser.add_argument('--workers', type=int, default=2,
                      help='worker processes of --mode input (also measured with 1)')
  parser.add_argument('--eval-images', type=int, default=400,
                      help='--mode eval: images pasted and encoded per host row (~5 s '
                           'of one core: enough that process start-up is not measured)')
  parser.add_argument('--eval-cocoeval-images', type=int, default=5000,
                      help='--mode eval: images of the synthetic COCOeval (0: skip it)')
  parser.add_argument('--eval-engines', default='faster_coco_eval,pycocotools',
                      help='--mode eval: COCOeval engines to time')
  parser.add_argument('--eval-paste', choices=('bilinear', 'torchvision'), default='bilinear',
                      help='--mode eval: the paste method')
  parser.add_argument('--checkpoint', default='',
                      help='--mode serving: weights (a training run or save_variables '
                           'folder); default seeded random weights')
  parser.add_argument('--serving-paths', default='stablehlo,saved_model,onnx',
                      help='--mode serving: paths to time beside jax.jit')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--output', default='', help='write the results as JSON here')
  parser.add_argument('--markdown', default='', help='append the Markdown table here')
  args = parser.parse_args()
  if args.mode == 'eval':
    run_eval_mode(args)
    return
  if not args.config:
    parser.error(f'--mode {args.mode} needs --config')
  if args.steps <= 0 or args.warmup < 0 or args.peak_tflops < 0:
    parser.error('--steps must be positive, --warmup and --peak-tflops not negative')
  if args.image_size and any(side % 64 for side in args.image_size):
    parser.error(f'--image-size sides must be multiples of 64 (data.image_size); '
                 f'got {args.image_size[0]}x{args.image_size[1]}')
  if args.mode == 'serving':
    run_serving_mode(args)
    return
  if bool(args.annotations) != bool(args.images):
    parser.error('--annotations and --images go together')
  if args.mode == 'input' and not args.annotations:
    parser.error('--mode input needs --annotations and --images')
  for path in (args.annotations, args.images):
    if path and not os.path.exists(path):
      parser.error(f'not found: {path}')
  cases = [(batch, dtype) for batch in args.batch for dtype in (args.dtype or [None])]
  configs = [load_benchmark_config(args.config, args.mode, batch, args.image_size, dtype)
             for batch, dtype in cases]
  if not 1 <= args.instances <= configs[0].data.max_instances:
    parser.error(f'--instances must be 1..{configs[0].data.max_instances} '
                 f'(data.max_instances); got {args.instances}')
  cores = sorted(os.sched_getaffinity(0))
  if not 0 <= args.threads <= len(cores):
    parser.error(f'--threads must be 0..{len(cores)} (the cores this process may use)')

  if args.threads:
    # Pins this process (and the torchvision child) to the first N cores: XLA's CPU
    # thread pool has no per-run size, but it cannot use more cores than it may run on.
    os.sched_setaffinity(0, cores[:args.threads])
  threads = len(os.sched_getaffinity(0))
  result = {
      'config': args.config, 'mode': args.mode, 'batch': args.batch,
      'image_size': list(configs[0].data.image_size) if args.mode != 'input' else None,
      'steps': args.steps, 'warmup': args.warmup, 'instances': args.instances,
      'threads': threads, 'date': datetime.datetime.now().isoformat(timespec='seconds'),
      'machine': f'{cpu_name()}, {os.cpu_count()} CPUs',
      'load_average': ' '.join(f'{v:.2f}' for v in os.getloadavg()),
      'jax_version': jax.__version__, 'peak_tflops': args.peak_tflops or None,
  }
  if args.annotations:
    native = load_benchmark_config(args.config, 'train', args.batch[0], None, None)
    native.data.dataset = 'coco'
    native.data.train_annotations, native.data.train_images = args.annotations, args.images
    sizes = [(r.height, r.width) for r in coco.load_coco(args.annotations, args.images,
                                                         filter_empty=False).records]
    result['pixels'] = padded_pixel_ratio(native.data, sizes)
    if args.mode == 'input':
      result['input'] = input_benchmark.measure_input(
          native, num_workers=sorted({1, args.workers}), num_batches=args.steps,
          seed=args.seed)
    elif args.mode == 'train':
      result['real_data'] = benchmark_real_train(native, args.annotations, args.images,
                                                 args.steps, args.seed)
  result['cases'] = []
  if args.mode != 'input':
    compare_reason = torchvision_missing() if args.compare == 'torchvision' else ''
    if compare_reason:
      print(compare_reason, file=sys.stderr)
      result['compare_error'] = compare_reason
    with multiprocessing.get_context('spawn').Pool(1) as pool:
      for (batch, _), config in zip(cases, configs):
        case = {'batch': batch, 'dtype': config.model.dtype,
                'jax': benchmark_jax(config, args.mode, args.steps, args.warmup, args.seed,
                                     args.instances, args.peak_tflops)}
        if args.compare == 'torchvision' and not compare_reason:
          case['torchvision'] = pool.apply(
              benchmark_torchvision, (config.to_dict(), args.mode, args.steps, args.warmup,
                                      args.seed, threads, case['jax']['backend'] == 'gpu',
                                      args.instances))
          case['torchvision_over_jax'] = (case['torchvision']['rows'][0]['median_s']
                                          / case['jax']['rows'][0]['median_s'])
        result['cases'].append(case)
        print(f'batch {batch} {config.model.dtype}: done', file=sys.stderr, flush=True)
  table = markdown_table(result)
  _write_outputs(args, result, table)


def _write_outputs(args: argparse.Namespace, result: dict, table: str) -> None:
  """Prints the Markdown table; writes the JSON (--output) and appends the table
  (--markdown)."""
  print(table)
  if args.output:
    with open(args.output, 'w') as f:
      json.dump(result, f, indent=1)
  if args.markdown:
    with open(args.markdown, 'a') as f:
      f.write('\n' + table)


def run_eval_mode(args: argparse.Namespace) -> None:
  """--mode eval: maskrcnn_jax/eval_benchmark.py (host paste + RLE, COCOeval)."""
  from benchmarks import evaluation as eval_benchmark  # pylint: disable=import-outside-toplevel
  result = eval_benchmark.run(args.eval_images, args.workers, args.eval_cocoeval_images,
                              args.eval_engines.split(','), mask_paste=args.eval_paste)
  result.update(mode='eval', date=datetime.datetime.now().isoformat(timespec='seconds'),
                machine=f'{cpu_name()}, {os.cpu_count()} CPUs')
  table = eval_benchmark.markdown_table(result)
  _write_outputs(args, result, table)


def run_serving_mode(args: argparse.Namespace) -> None:
  """--mode serving: maskrcnn_jax/serving_benchmark.py (every export path, timed)."""
  from maskrcnn_jax import checkpoint  # pylint: disable=import-outside-toplevel
  from benchmarks import serving as serving_benchmark  # pylint: disable=import-outside-toplevel
  config = load_benchmark_config(args.config, 'infer', args.batch[0], args.image_size,
                                 (args.dtype or [None])[0])
  if args.checkpoint:
    variables = checkpoint.load_variables(args.checkpoint)
  else:
    variables = step_lib.init_variables(mask_rcnn.MaskRCNN(config.model),
                                        tuple(config.data.image_size), jax.random.key(args.seed))
  result = serving_benchmark.run(config, variables, args.batch[0], args.steps,
                                 tuple(args.serving_paths.split(',')), seed=args.seed)
  result.update(mode='serving', config=args.config,
                date=datetime.datetime.now().isoformat(timespec='seconds'),
                machine=f'{cpu_name()}, {os.cpu_count()} CPUs',
                load_average=' '.join(f'{v:.2f}' for v in os.getloadavg()))
  _write_outputs(args, result, serving_benchmark.markdown_table(result))


if __name__ == '__main__':
  main()
