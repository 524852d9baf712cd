"""Times a config's train step or inference on synthetic input, optionally beside torchvision.

  python scripts/benchmark.py --config configs/maskrcnn_r50_fpn_1x.py --mode train \
      --batch 1 --image-size 512x512 --steps 5 --warmup 1 --compare torchvision \
      --output bench.json --markdown docs/benchmarks.md

Every measured function runs once (its time is the time to first call: compilation
included), then `--warmup` untimed times, then `--steps` timed times; the table gives
the median. Modes:
  train: `train.jit_train_step` on a synthetic batch (`--instances` random boxes per
    image, masks filling their boxes) with data.image_size set to the given size.
  infer: `Predictor.predict_batch` on B random uint8 images of the given size (host
    preprocessing, device forward, host mask pasting), and the jitted model forward
    alone on device-resident inputs. Images are not resized (square resize to their own
    longer side) and the score threshold is 0, so every image pastes
    detections_per_image masks whatever the random weights score.
Host memory is the process's peak resident set (VmHWM, else getrusage maxrss) and its
growth from before the model was built (after the imports); device memory is jax's
peak_bytes_in_use where the backend reports it.

--compare torchvision measures torchvision's Mask R-CNN with the same depth, classes,
frozen stages (FrozenBatchNorm, as with an ImageNet backbone), RPN/RoI counts and input
size, in a child process of its own (so its memory is its own) using the same number of
threads: train = forward + backward + SGD step in train mode on the same synthetic
targets, infer = eval-mode forward including its mask pasting. Needs torch and
torchvision importable; the package itself never imports torch.

The two train steps do different amounts of mask work. Ours runs the mask head on the
static foreground sample (batch_size_per_image * positive_fraction: 128 RoIs per image
in the COCO configs) whatever the data; torchvision runs it on the positive proposals it
found. With random weights those are about the ground-truth boxes themselves, so
`--instances` sets torchvision's mask work; both counts are reported.
"""

import argparse
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

from maskrcnn_jax import config as config_lib
from maskrcnn_jax import parallel
from maskrcnn_jax import train
from maskrcnn_jax import xla_options
from maskrcnn_jax.data import pipeline
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.predictor import Predictor


def parse_image_size(text: str) -> tuple[int, int]:
  """'HxW' -> (H, W)."""
  try:
    height, width = (int(v) for v in text.lower().split('x'))
  except ValueError:
    raise argparse.ArgumentTypeError(f'image size must look like 512x512; got {text!r}')
  if height <= 0 or width <= 0:
    raise argparse.ArgumentTypeError(f'image size must be positive; got {text!r}')
  return height, width


def load_benchmark_config(path_and_arg: str, mode: str, batch: int, height: int,
                          width: int) -> ml_collections.ConfigDict:
  """The config file (`path` or `path:arg`) set to take unresized `height x width` inputs."""
  path, _, arg = path_and_arg.partition(':')
  config = config_lib.load_config_file(path, arg or None)
  d = config.data
  d.image_size = (height, width)
  d.resize_mode, d.min_size, d.max_size = 'square', min(height, width), max(height, width)
  config.eval.pad_to_multiple = 0
  config.train.batch_size = batch
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


def synthetic_train_batch(config: ml_collections.ConfigDict, seed: int, instances: int
                          ) -> dict[str, np.ndarray]:
  """A batch with the batch table's shapes: random images, `synthetic_instances` as GT."""
  batch_size = config.train.batch_size
  height, width = config.data.image_size
  batch = pipeline.empty_batch(batch_size, config.data)
  n = min(instances, config.data.max_instances)
  boxes, classes = synthetic_instances(seed, batch_size, height, width,
                                       config.model.num_classes, n)
  batch['images'][:] = np.random.default_rng(seed).normal(size=batch['images'].shape)
  batch['image_info'][:] = [height, width, 1.0, 0.0]
  batch['gt_boxes'][:, :n] = boxes[:, :n]
  batch['gt_classes'][:, :n] = classes[:, :n]
  batch['gt_masks'][:, :n] = 1  # a mask filling its box, cropped to the box
  batch['image_id'][:] = np.arange(batch_size)
  return batch


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
                  seed: int, instances: int) -> dict[str, Any]:
  """Rows of timings and the memory of this process for maskrcnn-jax."""
  before = host_peak_mb()
  batch_size = config.train.batch_size
  height, width = config.data.image_size
  rows = []
  if mode == 'train':
    mesh = parallel.data_mesh()
    model, optimizer, state = train.create_train_state(config, jax.random.key(seed))
    step = train.jit_train_step(model, optimizer, config.train, mesh)
    state = parallel.replicate(state, mesh)
    batch = parallel.host_batch_to_global(synthetic_train_batch(config, seed, instances),
                                          mesh)
    key = jax.random.key(seed + 1)

    def train_once():
      nonlocal state
      state, metrics = step(state, batch, key)
      jax.block_until_ready(metrics)

    rows.append(_row('maskrcnn-jax', 'train step', time_calls(train_once, steps, warmup),
                     batch_size))
    extra = {'mask_head_rois_per_image': static_mask_rois(config)}
  else:
    model = mask_rcnn.MaskRCNN(config.model)
    variables = train.init_variables(model, (height, width), jax.random.key(seed))
    predictor = Predictor(config, variables)
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (height, width, 3), np.uint8) for _ in range(batch_size)]
    detections = []

    def predict_once():
      detections[:] = predictor.predict_batch(images)

    rows.append(_row('maskrcnn-jax', 'Predictor.predict_batch (host paste incl.)',
                     time_calls(predict_once, steps, warmup), batch_size))
    extra = {'detections_per_image': float(np.mean([len(d['scores']) for d in detections]))}
    inputs = jax.device_put(predictor.preprocess(images))
    forward = jax.jit(model.apply, compiler_options=xla_options.compiler_options())
    rows.append(_row('maskrcnn-jax', 'jitted model forward',
                     time_calls(lambda: jax.block_until_ready(forward(variables, *inputs)),
                                steps, warmup), batch_size))
  peak = host_peak_mb()
  return {'rows': rows, 'host_peak_mb': peak, 'host_growth_mb': peak - before,
          'device_peak_mb': jax_device_peak_mb(), 'backend': jax.default_backend(),
          'device': str(jax.local_devices()[0].device_kind), **extra}


def benchmark_torchvision(config_dict: dict[str, Any], mode: str, steps: int, warmup: int,
                          seed: int, threads: int, use_cuda: bool, instances: int
                          ) -> dict[str, Any]:
  """Like `benchmark_jax` for torchvision's Mask R-CNN; run in a process of its own."""
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


def markdown_table(result: dict[str, Any]) -> str:
  """The result as a Markdown section: a header line, the table and the ratio."""
  lines = [f'### {result["config"]} {result["mode"]}, batch {result["batch"]}, '
           f'{result["image_size"][0]}x{result["image_size"][1]}', '',
           f'{result["date"]}; {result["machine"]}; {result["threads"]} threads; '
           f'load average before: {result["load_average"]}; '
           f'{result["steps"]} timed steps after {result["warmup"]} warm-up.', '',
           '| framework | measured | first call (s) | median (s) | images/s '
           '| host peak (MiB) | host growth (MiB) | device peak (MiB) |',
           '|---|---|---|---|---|---|---|---|']
  for framework in ('jax', 'torchvision'):
    part = result.get(framework)
    if not isinstance(part, dict):
      continue
    for row in part['rows']:
      lines.append(
          f'| {row["framework"]} | {row["measured"]} | {row["first_call_s"]:.2f} '
          f'| {row["median_s"]:.3f} | {row["images_per_second"]:.2f} '
          f'| {part["host_peak_mb"]:.0f} | {part["host_growth_mb"]:.0f} '
          f'| {_format(part["device_peak_mb"], 0)} |')
  if result['mode'] == 'train':
    counts = [f'{name} {result[framework]["mask_head_rois_per_image"]:g}'
              for framework, name in (('jax', 'maskrcnn-jax'), ('torchvision', 'torchvision'))
              if isinstance(result.get(framework), dict)]
    lines += ['', f'{result["instances"]} ground-truth instances per image; mask head RoIs '
                  f'per image: {", ".join(counts)}.']
  if 'torchvision_over_jax' in result:
    lines += ['', f'torchvision median time / maskrcnn-jax median time: '
                  f'{result["torchvision_over_jax"]:.2f} (> 1: maskrcnn-jax is faster)']
  if 'compare_error' in result:
    lines += ['', result['compare_error']]
  return '\n'.join(lines) + '\n'


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', required=True, help='configs/X.py, or configs/X.py:arg')
  parser.add_argument('--mode', choices=('train', 'infer'), required=True)
  parser.add_argument('--batch', type=int, default=1, help='images per step')
  parser.add_argument('--image-size', type=parse_image_size, default=(512, 512),
                      help='HxW of the synthetic images (padded input size)')
  parser.add_argument('--steps', type=int, default=10, help='timed calls')
  parser.add_argument('--warmup', type=int, default=2, help='untimed calls after the first')
  parser.add_argument('--compare', choices=('torchvision',), default=None)
  parser.add_argument('--threads', type=int, default=0,
                      help='CPU cores for both frameworks (0: all this process may use)')
  parser.add_argument('--instances', type=int, default=3,
                      help='synthetic ground-truth instances per training image')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--output', default='', help='write the results as JSON here')
  parser.add_argument('--markdown', default='', help='append the Markdown table here')
  args = parser.parse_args()
  if args.batch <= 0 or args.steps <= 0 or args.warmup < 0:
    parser.error('--batch and --steps must be positive and --warmup not negative')
  if any(side % 64 for side in args.image_size):
    parser.error(f'--image-size sides must be multiples of 64 (data.image_size); '
                 f'got {args.image_size[0]}x{args.image_size[1]}')
  height, width = args.image_size
  config = load_benchmark_config(args.config, args.mode, args.batch, height, width)
  if not 1 <= args.instances <= config.data.max_instances:
    parser.error(f'--instances must be 1..{config.data.max_instances} (data.max_instances); '
                 f'got {args.instances}')
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
      'image_size': [height, width], 'steps': args.steps, 'warmup': args.warmup,
      'instances': args.instances,
      'threads': threads, 'date': datetime.datetime.now().isoformat(timespec='seconds'),
      'machine': f'{cpu_name()}, {os.cpu_count()} CPUs',
      'load_average': ' '.join(f'{v:.2f}' for v in os.getloadavg()),
      'jax_version': jax.__version__,
  }
  result['jax'] = benchmark_jax(config, args.mode, args.steps, args.warmup, args.seed,
                                args.instances)
  if args.compare == 'torchvision':
    reason = torchvision_missing()
    if reason:
      print(reason, file=sys.stderr)
      result['compare_error'] = reason
    else:
      use_cuda = result['jax']['backend'] == 'gpu'
      with multiprocessing.get_context('spawn').Pool(1) as pool:
        result['torchvision'] = pool.apply(
            benchmark_torchvision, (config.to_dict(), args.mode, args.steps, args.warmup,
                                    args.seed, threads, use_cuda, args.instances))
      result['torchvision_over_jax'] = (result['torchvision']['rows'][0]['median_s']
                                        / result['jax']['rows'][0]['median_s'])
  table = markdown_table(result)
  print(table)
  if args.output:
    with open(args.output, 'w') as f:
      json.dump(result, f, indent=1)
  if args.markdown:
    with open(args.markdown, 'a') as f:
      f.write('\n' + table)


if __name__ == '__main__':
  main()
