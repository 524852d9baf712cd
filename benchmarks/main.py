"""Times a config's train step, inference or input pipeline, optionally beside torchvision.

  python scripts/benchmark.py --config configs/maskrcnn_r50_fpn_1x.py --mode train \
      --batch 1,8 --dtype bfloat16,float32 --image-size 512x512 --steps 5 --warmup 1 \
      --compare torchvision --peak-tflops 990 --output bench.json --markdown docs/benchmarks.md

One run measures every (batch, dtype) case with `timing.time_calls`: each function is
compiled first (`compile_s`), called once (`first_call_s`), `--warmup` untimed times,
then `--steps` timed times; the table gives the median. Modes:
  train, infer: `model_step.py` (and `torchvision_compare.py` with `--compare
    torchvision`); train with `--annotations/--images` also times real batches from that
    COCO-format folder (`real_data.py`). With `--annotations`, train, infer and input
    also give the padded / resized pixel ratio of the config's canvases over the folder.
  input: the input pipeline alone over `--annotations/--images` (`input_pipeline.py`).
  eval: evaluation's host side and COCOeval (`evaluation.py`, no --config).
  serving: every serving path, exported and timed (`serving.py`).
  nms: NMS in rounds against the previous early-exit pass (`nms.py`, no --config;
    `--steps` timed calls after `--warmup`).
`--output` writes the result as JSON (scripts/gpu_benchmark.sh and the docs read its keys);
`--markdown` appends its table.
"""

import argparse
import json
import multiprocessing
import os
import sys
from typing import Any

import jax

from benchmarks import evaluation
from benchmarks import input_pipeline
from benchmarks import machine
from benchmarks import model_step
from benchmarks import nms
from benchmarks import real_data
from benchmarks import serving
from benchmarks import torchvision_compare
from maskrcnn_jax import checkpoint
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.train import step as step_lib

MODES = ('train', 'infer', 'input', 'eval', 'serving', 'nms')
NO_CONFIG_MODES = ('eval', 'nms')
Result = tuple[dict[str, Any], str]  # (the JSON, its Markdown)


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


def _add_case_flags(parser: argparse.ArgumentParser) -> None:
  """What is measured and how often."""
  parser.add_argument('--config', default='',
                      help='configs/X.py, or configs/X.py:arg (all modes but eval and nms)')
  parser.add_argument('--mode', choices=MODES, required=True)
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
  parser.add_argument('--seed', type=int, default=0)


def _add_mode_flags(parser: argparse.ArgumentParser) -> None:
  """The data of --annotations, and the flags of the eval and serving modes."""
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
  parser.add_argument('--output', default='', help='write the results as JSON here')
  parser.add_argument('--markdown', default='', help='append the Markdown table here')


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  _add_case_flags(parser)
  _add_mode_flags(parser)
  return parser


def check_timing_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Flags every mode but eval needs; exits with a usage error where one is wrong."""
  if args.mode not in NO_CONFIG_MODES and not args.config:
    parser.error(f'--mode {args.mode} needs --config')
  if args.steps <= 0 or args.warmup < 0 or args.peak_tflops < 0:
    parser.error('--steps must be positive, --warmup and --peak-tflops not negative')
  if args.image_size and any(side % 64 for side in args.image_size):
    parser.error(f'--image-size sides must be multiples of 64 (data.image_size); '
                 f'got {args.image_size[0]}x{args.image_size[1]}')


def check_data_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """--annotations and --images: together, existing, required by --mode input."""
  if bool(args.annotations) != bool(args.images):
    parser.error('--annotations and --images go together')
  if args.mode == 'input' and not args.annotations:
    parser.error('--mode input needs --annotations and --images')
  for path in (args.annotations, args.images):
    if path and not os.path.exists(path):
      parser.error(f'not found: {path}')


def pin_threads(parser: argparse.ArgumentParser, threads: int) -> int:
  """Pins this process (and the torchvision child) to the first `threads` cores (0: all
  it may use); returns the cores it may use. XLA's CPU thread pool has no per-run size,
  but it cannot use more cores than it may run on."""
  cores = sorted(os.sched_getaffinity(0))
  if not 0 <= threads <= len(cores):
    parser.error(f'--threads must be 0..{len(cores)} (the cores this process may use)')
  if threads:
    os.sched_setaffinity(0, cores[:threads])
  return len(os.sched_getaffinity(0))


def _folder_results(args: argparse.Namespace) -> dict[str, Any]:
  """What --annotations/--images give: 'pixels', and 'input' or 'real_data' by mode."""
  native = model_step.load_case_config(args.config, 'train', args.batch[0], None, None)
  native.data.dataset = 'coco'
  native.data.train_annotations, native.data.train_images = args.annotations, args.images
  sizes = real_data.image_sizes(args.annotations, args.images)
  results = {'pixels': real_data.padded_pixel_ratio(native.data, sizes)}
  if args.mode == 'input':
    results['input'] = input_pipeline.measure_input(
        native, num_workers=sorted({1, args.workers}), num_batches=args.steps,
        seed=args.seed)
  elif args.mode == 'train':
    results['real_data'] = real_data.time_real_train(native, args.annotations, args.images,
                                                     args.steps, args.seed)
  return results


def _time_cases(args: argparse.Namespace, configs: list, threads: int
                ) -> tuple[list[dict[str, Any]], str]:
  """Every (batch, dtype) case in this process, and beside it in a torchvision child;
  and why the comparison was skipped ('' where it ran or was not asked for)."""
  compare_reason = (torchvision_compare.torchvision_missing()
                    if args.compare == 'torchvision' else '')
  if compare_reason:
    print(compare_reason, file=sys.stderr)
  cases = []
  with multiprocessing.get_context('spawn').Pool(1) as pool:
    for config in configs:
      case = {'batch': config.train.batch_size, 'dtype': config.model.dtype,
              'jax': model_step.benchmark_jax(config, args.mode, args.steps, args.warmup,
                                               args.seed, args.instances, args.peak_tflops)}
      if args.compare == 'torchvision' and not compare_reason:
        case['torchvision'] = pool.apply(
            torchvision_compare.benchmark_torchvision,
            (config.to_dict(), args.mode, args.steps, args.warmup, args.seed, threads,
             case['jax']['backend'] == 'gpu', args.instances))
        case['torchvision_over_jax'] = (case['torchvision']['rows'][0]['median_s']
                                        / case['jax']['rows'][0]['median_s'])
      cases.append(case)
      print(f'batch {case["batch"]} {case["dtype"]}: done', file=sys.stderr, flush=True)
  return cases, compare_reason


def run_model_modes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Result:
  """--mode train, infer or input: every case, and what --annotations gives."""
  check_data_flags(parser, args)
  configs = [model_step.load_case_config(args.config, args.mode, batch, args.image_size,
                                         dtype)
             for batch in args.batch for dtype in (args.dtype or [None])]
  if not 1 <= args.instances <= configs[0].data.max_instances:
    parser.error(f'--instances must be 1..{configs[0].data.max_instances} '
                 f'(data.max_instances); got {args.instances}')
  threads = pin_threads(parser, args.threads)
  result = {
      'config': args.config, 'mode': args.mode, 'batch': args.batch,
      'image_size': list(configs[0].data.image_size) if args.mode != 'input' else None,
      'steps': args.steps, 'warmup': args.warmup, 'instances': args.instances,
      'threads': threads, 'date': machine.now(), 'machine': machine.description(),
      'load_average': machine.load_average(), 'jax_version': jax.__version__,
      'peak_tflops': args.peak_tflops or None,
  }
  if args.annotations:
    result.update(_folder_results(args))
  result['cases'] = []
  if args.mode != 'input':
    result['cases'], compare_reason = _time_cases(args, configs, threads)
    if compare_reason:
      result['compare_error'] = compare_reason
  return result, model_step.markdown_table(result)


def run_eval_mode(args: argparse.Namespace) -> Result:
  """--mode eval: host paste + RLE, and COCOeval (`evaluation.py`)."""
  result = evaluation.run(args.eval_images, args.workers, args.eval_cocoeval_images,
                          args.eval_engines.split(','), mask_paste=args.eval_paste)
  result.update(mode='eval', date=machine.now(), machine=machine.description())
  return result, evaluation.markdown_table(result)


def run_serving_mode(args: argparse.Namespace) -> Result:
  """--mode serving: every export path, timed (`serving.py`)."""
  config = model_step.load_case_config(args.config, 'infer', args.batch[0], args.image_size,
                                       (args.dtype or [None])[0])
  if args.checkpoint:
    variables = checkpoint.load_variables(args.checkpoint)
  else:
    variables = step_lib.init_variables(mask_rcnn.MaskRCNN(config.model),
                                        tuple(config.data.image_size), jax.random.key(args.seed))
  result = serving.run(config, variables, args.batch[0], args.steps,
                       tuple(args.serving_paths.split(',')), seed=args.seed)
  result.update(mode='serving', config=args.config, date=machine.now(),
                machine=machine.description(), load_average=machine.load_average())
  return result, serving.markdown_table(result)


def run_nms_mode(args: argparse.Namespace) -> Result:
  """--mode nms: NMS in rounds against the early-exit pass (`nms.py`)."""
  result = nms.time_cases(args.steps, args.warmup, args.seed)
  result.update(mode='nms', date=machine.now(), machine=machine.description(),
                load_average=machine.load_average())
  return result, nms.markdown_table(result)


def write_outputs(args: argparse.Namespace, result: dict[str, Any], table: str) -> None:
  """Prints the Markdown table; writes the JSON (--output) and appends the table
  (--markdown)."""
  print(table)
  if args.output:
    with open(args.output, 'w') as f:
      json.dump(result, f, indent=1)
  if args.markdown:
    with open(args.markdown, 'a') as f:
      f.write('\n' + table)


def main(argv: list[str] | None = None) -> None:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.mode != 'eval':
    check_timing_flags(parser, args)
  if args.mode == 'eval':
    result, table = run_eval_mode(args)
  elif args.mode == 'nms':
    result, table = run_nms_mode(args)
  elif args.mode == 'serving':
    result, table = run_serving_mode(args)
  else:
    result, table = run_model_modes(parser, args)
  write_outputs(args, result, table)
