"""A config's programs compiled ahead of time for a TPU topology, on a machine with no TPU.

libtpu (`pip install -e '.[tpu]'`) compiles for the devices of a topology description
(`jax.experimental.topologies.get_topology_desc`) in a process whose own backend stays
the CPU (`JAX_PLATFORMS=cpu`). Each program is jitted as training and evaluation jit it,
on a data-parallel mesh of the topology's chips (state replicated, batch split), with
the op forms and compiler options chosen for TPU (runtime/compiler.py), then lowered
with abstract inputs and compiled by XLA:TPU. What the compiled program says is the
chip's own plan: `memory_analysis()` the HBM per chip, `cost_analysis()` the FLOPs and
bytes accessed per chip, the optimized HLO its loops, custom calls and host transfers.

Programs:
  train: `train/step.py`'s `jit_train_step`, one SGD step on the global batch.
  infer: the model forward as `Evaluator` jits it (batch split, outputs gathered).
  export: the forward as `inference/export.py` serializes it, weights inside, on one chip.

  JAX_PLATFORMS=cpu python scripts/aot.py --config configs/maskrcnn_r50_fpn_1x.py \
      --program train,infer --chip v5e,v4 --batch 2,8 --dtype bfloat16 \
      --output aot.jsonl --markdown aot.md

Each case writes one JSON line (`--output`, appended) and one Markdown row (printed, and
appended to `--markdown`). With `--lowering-stats`, libtpu logs how long its backend
spent lowering each HLO instruction (`LLO-STATS` lines of its log in /tmp/tpu_logs) and
the JSON names the slowest, with their JAX op names: where compile time goes.

The roofline bound is the chip's published peak bf16 FLOP/s and HBM bandwidth (`CHIPS`)
against the program's FLOPs and bytes accessed per chip.
XLA:TPU's own cost-model time (`optimal_seconds`) is also kept, corrected: it counts
-1 s for each `ConcatBitcast` custom call (their count is added back), and like the
FLOPs it counts each while-loop body once.
"""

import argparse
import dataclasses
import functools
import glob
import json
import os
import re
import resource
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from benchmarks import machine
from benchmarks import main as benchmarks_main
from benchmarks import model_step
from benchmarks import tables
from maskrcnn_jax.data import examples
from maskrcnn_jax.inference import export
from maskrcnn_jax.model import mask_rcnn
from maskrcnn_jax.runtime import compiler
from maskrcnn_jax.runtime import distributed
from maskrcnn_jax.runtime import program_stats
from maskrcnn_jax.train import optimizer as optimizer_lib
from maskrcnn_jax.train import step as step_lib

PROGRAMS = ('train', 'infer', 'export')
GIB = 2**30
LOWERING_STATS_FLAG = '--xla_tpu_impure_dump_lowering_stats=true'
_LLO_STATS = re.compile(r'LLO-STATS: START\((\d+)\) END\((\d+)\) HLO\(([^)]*)\)')
_HLO_OP_NAME = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = .*?op_name="([^"]*)"')


@dataclasses.dataclass(frozen=True)
class Chip:
  """A TPU generation: how to name its topology, and its published per-chip figures.

  Figures from the Cloud TPU system architecture pages (cloud.google.com/tpu/docs):
  HBM capacity, peak bf16 FLOP/s and HBM bandwidth of one chip.
  """
  topology: str  # the smallest slice's name for get_topology_desc
  chip_config: str  # 'megacore': one device per chip of two TensorCores
  hbm_gib: float
  peak_bf16_tflops: float
  hbm_gb_per_s: float


CHIPS = {
    'v5e': Chip('v5e:2x2', 'default', 16, 197, 819),
    'v4': Chip('v4:2x2x1', 'megacore', 32, 275, 1200),
    'v5p': Chip('v5p:2x2x1', 'megacore', 95, 459, 2765),
    'v6e': Chip('v6e:2x2', 'default', 32, 918, 1640),
}


def topology_devices(chip: str) -> list[Any]:
  """The compile-only devices of `CHIPS[chip]`'s slice, one per chip."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  # libtpu locks /tmp/libtpu_lockfile for the process that drives the TPU; compiling
  # drives none, so several compiling processes may share the machine.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  spec = CHIPS[chip]
  try:
    return list(topologies.get_topology_desc(spec.topology, 'tpu',
                                             chip_config_name=spec.chip_config).devices)
  except RuntimeError as error:
    raise RuntimeError(f'no TPU compiler for {spec.topology} (libtpu: pip install -e '
                       f'".[tpu]"): {str(error).splitlines()[0]}') from error


def data_mesh(devices: list[Any]) -> jax.sharding.Mesh:
  """A 1-D 'data' mesh over `devices`."""
  return jax.sharding.Mesh(np.array(devices), (distributed.DATA_AXIS,),
                           axis_types=(jax.sharding.AxisType.Auto,))


def _abstract(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """ShapeDtypeStructs of `tree`'s arrays (or shapes) placed with `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      tree)


def _abstract_batch(config: ml_collections.ConfigDict, batch_size: int,
                    mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
  return _abstract(examples.empty_batch(batch_size, config.data),
                   distributed.batch_sharding(mesh))


def _abstract_variables(model: mask_rcnn.MaskRCNN, config: ml_collections.ConfigDict
                        ) -> dict[str, Any]:
  return jax.eval_shape(functools.partial(step_lib.init_variables, model,
                                          tuple(config.data.image_size)),
                        jax.random.key(0))


def lower_train(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                batch_size: int) -> jax.stages.Lowered:
  """The train step for the devices of `mesh`, lowered for a global batch."""
  model = step_lib.training_model(config, compiler.mesh_platform(mesh))
  variables = _abstract_variables(model, config)
  optimizer = optimizer_lib.make_optimizer(config.train, variables['params'],
                                           config.model.backbone.freeze_at)
  replicated = distributed.replicated(mesh)
  state = _abstract(jax.eval_shape(functools.partial(step_lib.new_train_state, optimizer),
                                   variables), replicated)
  key = _abstract(jax.eval_shape(jax.random.key, 0), replicated)
  step = step_lib.jit_train_step(model, optimizer, config.train, mesh)
  return step.lower(state, _abstract_batch(config, batch_size, mesh), key)


def lower_infer(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                batch_size: int) -> jax.stages.Lowered:
  """The model forward as evaluation jits it: weights replicated, images split."""
  model = mask_rcnn.MaskRCNN(config.model)
  replicated, sharded = distributed.replicated(mesh), distributed.batch_sharding(mesh)
  variables = _abstract(_abstract_variables(model, config), replicated)
  batch = _abstract_batch(config, batch_size, mesh)
  forward = compiler.jit(model.apply, compiler.mesh_platform(mesh),
                         in_shardings=(replicated, sharded, sharded),
                         out_shardings=replicated)
  return forward.lower(variables, batch['images'], batch['image_info'])


def lower_export(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                 batch_size: int) -> jax.stages.Lowered:
  """The serving artifact's program (`export.export_stablehlo` for TPU, weights inside)
  as a server loading it compiles it, on one chip."""
  model = mask_rcnn.MaskRCNN(config.model)
  variables = step_lib.init_variables(model, tuple(config.data.image_size),
                                      jax.random.key(0))
  exported = export.export_stablehlo(config, variables, batch_size, platforms=('tpu',))
  device = jax.sharding.SingleDeviceSharding(mesh.devices.flat[0])
  inputs = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device) for a in exported.in_avals]
  return jax.jit(exported.call).lower(*inputs)


LOWER = {'train': lower_train, 'infer': lower_infer, 'export': lower_export}


def lowering_seconds(log_text: str) -> dict[str, float]:
  """HLO instruction name -> seconds libtpu spent lowering it, from its `LLO-STATS` lines."""
  seconds: dict[str, float] = {}
  for start, end, name in _LLO_STATS.findall(log_text):
    seconds[name] = seconds.get(name, 0.0) + (int(end) - int(start)) / 1e6
  return seconds


def slowest_lowerings(log_text: str, hlo_text: str, count: int = 12
                      ) -> list[dict[str, Any]]:
  """The `count` HLO instructions slowest to lower, with the JAX op each came from."""
  op_names = {}
  for line in hlo_text.splitlines():
    match = _HLO_OP_NAME.match(line)
    if match:
      op_names.setdefault(match.group(1), match.group(2))
  seconds = lowering_seconds(log_text)
  slowest = sorted(seconds, key=seconds.get, reverse=True)[:count]
  return [{'hlo': name, 'seconds': round(seconds[name], 2), 'op_name': op_names.get(name, '')}
          for name in slowest]


class _LibtpuLog:
  """What libtpu's log of this process gained since the last `new_text()`."""

  def __init__(self):
    self._offset = 0

  def new_text(self) -> str:
    paths = sorted(glob.glob(f'/tmp/tpu_logs/*.INFO.*.{os.getpid()}'))
    if not paths:
      return ''
    with open(paths[-1]) as f:
      f.seek(self._offset)
      text = f.read()
      self._offset = f.tell()
    return text


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def compile_program(config: ml_collections.ConfigDict, program: str, chip: str,
                    batch_per_chip: int, hlo_path: str = '') -> tuple[dict[str, Any], str]:
  """`program` of `config` compiled for `chip`'s slice: one JSON-able result and the
  optimized HLO text (also written to `hlo_path`, given one)."""
  devices = topology_devices(chip)
  chips = len(devices) if program != 'export' else 1
  mesh = data_mesh(devices)
  start, start_cpu = time.perf_counter(), _cpu_seconds()
  lowered = LOWER[program](config, mesh, batch_per_chip * chips)
  lower_s = time.perf_counter() - start
  start, start_cpu_compile = time.perf_counter(), _cpu_seconds()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  compile_cpu_s = _cpu_seconds() - start_cpu_compile
  stats = program_stats.accelerator_stats(compiled)
  hlo_text = compiled.as_text()
  if hlo_path:
    with open(hlo_path, 'w') as f:
      f.write(hlo_text)
  if stats['cost_model_seconds'] is not None:
    stats['cost_model_seconds'] += stats['custom_calls'].get('ConcatBitcast', 0)
  return dict(program=program, chip=chip, topology=CHIPS[chip].topology, chips=chips,
              batch_per_chip=batch_per_chip, dtype=config.model.dtype,
              canvas=list(config.data.image_size), lower_s=lower_s, compile_s=compile_s,
              compile_cpu_s=compile_cpu_s, lower_and_compile_cpu_s=_cpu_seconds() - start_cpu,
              **stats, **roofline(stats, CHIPS[chip], batch_per_chip),
              jax_version=jax.__version__, libtpu_version=_libtpu_version()), hlo_text


def _libtpu_version() -> str:
  try:
    import importlib.metadata  # pylint: disable=import-outside-toplevel
    return importlib.metadata.version('libtpu')
  except Exception:  # pylint: disable=broad-except
    return 'unknown'


def roofline(stats: dict[str, Any], chip: Chip, batch_per_chip: int) -> dict[str, Any]:
  """Per image, and the roofline bound on images/s per chip from the chip's peak bf16
  FLOP/s and HBM bandwidth: compute and memory traffic as if each ran at its peak and
  the slower one alone set the time."""
  flops, bytes_accessed = stats['flops'], stats['bytes_accessed']
  compute_s = flops / (chip.peak_bf16_tflops * 1e12)
  memory_s = bytes_accessed / (chip.hbm_gb_per_s * 1e9)
  bound_s = max(compute_s, memory_s)
  return dict(gflops_per_image=flops / batch_per_chip / 1e9,
              gb_accessed_per_image=bytes_accessed / batch_per_chip / 1e9,
              roofline_compute_ms=compute_s * 1e3, roofline_memory_ms=memory_s * 1e3,
              roofline_images_per_s=batch_per_chip / bound_s if bound_s > 0 else None,
              hbm_capacity_gib=chip.hbm_gib,
              fits_hbm=stats['hbm_total_bytes'] <= chip.hbm_gib * GIB)


HEADER = ['config', 'program', 'chip', 'batch / chip', 'dtype', 'canvas', 'compile s (CPU s)',
          'HBM GiB: args / out / temp / code / total (of chip)', 'GFLOP / image',
          'GB accessed / image', 'roofline img/s / chip', 'while loops static / dynamic',
          'host transfers', 'custom calls']


def markdown_row(config_name: str, r: dict[str, Any]) -> list[str]:
  """One result as the cells of `HEADER`."""
  hbm = ' / '.join(f'{r[k] / GIB:.2f}' for k in
                   ('hbm_argument_bytes', 'hbm_output_bytes', 'hbm_temp_bytes',
                    'hbm_code_bytes', 'hbm_total_bytes'))
  calls = ', '.join(f'{name} {n}' for name, n in sorted(r['custom_calls'].items())) or '0'
  return [config_name, r['program'], r['topology'], str(r['batch_per_chip']), r['dtype'],
          'x'.join(map(str, r['canvas'])),
          f'{r["compile_s"]:.0f} ({r["compile_cpu_s"]:.0f})',
          f'{hbm} ({r["hbm_capacity_gib"]:g}{"" if r["fits_hbm"] else ", DOES NOT FIT"})',
          tables.cell(r['gflops_per_image'], 0), tables.cell(r['gb_accessed_per_image'], 1),
          tables.cell(r['roofline_images_per_s'], 1),
          f'{r["while_loops_static_trip_count"]} / {r["while_loops_dynamic_trip_count"]}',
          str(r['host_transfers']), calls]


def _choices(choices):
  """An argparse type: a comma-separated list of `choices`."""
  def parse(text):
    values = [v for v in text.split(',') if v]
    if not values or any(v not in choices for v in values):
      raise argparse.ArgumentTypeError(f'{text!r}: expected a comma-separated list of '
                                       f'{", ".join(choices)}')
    return values
  return parse


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', required=True, help='config file, path or path:arg')
  parser.add_argument('--program', type=_choices(PROGRAMS), default=['train'])
  parser.add_argument('--chip', type=_choices(tuple(CHIPS)), default=['v5e'])
  parser.add_argument('--batch', type=benchmarks_main.parse_batches, default=[2],
                      help='images per chip')
  parser.add_argument('--dtype', type=benchmarks_main.parse_dtypes, default=['bfloat16'])
  parser.add_argument('--canvas', type=benchmarks_main.parse_image_size, default=None,
                      help='HxW padded input (default: the config\'s main canvas)')
  parser.add_argument('--output', default='', help='append one JSON line per case here')
  parser.add_argument('--markdown', default='', help='append one table row per case here')
  parser.add_argument('--lowering-stats', action='store_true',
                      help='name the HLO instructions slowest to lower in the JSON')
  parser.add_argument('--hlo-dir', default='',
                      help='write each optimized HLO module here (for reading what XLA:TPU '
                           'made of the program)')
  return parser


def main(argv: list[str] | None = None) -> None:
  args = build_parser().parse_args(argv)
  if jax.default_backend() != 'cpu':
    print('warning: run with JAX_PLATFORMS=cpu, so that only the compiler of the TPU is '
          'used', file=sys.stderr)
  config_name = os.path.relpath(args.config.partition(':')[0])
  if args.lowering_stats:  # read by libtpu when it loads, at the first compile
    os.environ['LIBTPU_INIT_ARGS'] = ' '.join(
        filter(None, [os.environ.get('LIBTPU_INIT_ARGS', ''), LOWERING_STATS_FLAG]))
  libtpu_log = _LibtpuLog()
  print('\n'.join(tables.markdown_table(HEADER, [])))
  for chip in args.chip:
    for program in args.program:
      for dtype in args.dtype:
        for batch in args.batch:
          config = model_step.load_case_config(args.config, 'train', batch, args.canvas,
                                               dtype)
          hlo_path = ''
          if args.hlo_dir:
            os.makedirs(args.hlo_dir, exist_ok=True)
            stem = os.path.splitext(os.path.basename(config_name))[0]
            hlo_path = os.path.join(args.hlo_dir,
                                    f'{stem}_{program}_{chip}_b{batch}_{dtype}.hlo.txt')
          result, hlo_text = compile_program(config, program, chip, batch, hlo_path)
          result = dict(config=args.config, date=machine.now(),
                        machine=machine.description(), **result)
          if args.lowering_stats:
            log_text = libtpu_log.new_text()
            result['lowering_seconds_summed'] = sum(lowering_seconds(log_text).values())
            result['slowest_lowerings'] = slowest_lowerings(log_text, hlo_text)
          row = tables.row_line(markdown_row(config_name, result))
          print(row, flush=True)
          if args.output:
            with open(args.output, 'a') as f:
              f.write(json.dumps(result) + '\n')
          if args.markdown:
            with open(args.markdown, 'a') as f:
              f.write(row + '\n')
          jax.clear_caches()
