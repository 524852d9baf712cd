"""What XLA says about a compiled program: FLOPs, memory, while loops, host transfers.

`compiled_stats` reads what every backend reports: the FLOPs of one call (XLA's
HloCostAnalysis, which counts a while loop's body once), the temp buffer bytes XLA
allocates beside arguments and outputs, and the while loops with and without a trip
count known at compile time. On XLA:GPU a loop without a known trip count copies its
predicate to the host and waits for it every iteration; one with a known trip count runs
its body back to back. `accelerator_stats` adds what an accelerator's compiler reports
(XLA:TPU ahead of time, benchmarks/tpu_aot.py): the device memory plan, bytes accessed,
custom calls and host transfers.
"""

import dataclasses
import re
from typing import Any

_WHILE = re.compile(r'=\s*\([^=]*\)\s+while\(|\swhile\(')
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CONDITION = re.compile(r'condition=(%[\w.\-]+)')
_COMPUTATION = re.compile(r'^(?:ENTRY )?(%[\w.\-]+) ')
_CONSTANT = re.compile(r'^\s*(%[\w.\-]+) = s32\[\]\S* constant\((-?\d+)\)')
_BOUND = re.compile(r'ROOT %[\w.\-]+ = pred\[\]\S* compare\((%[\w.\-]+), (%[\w.\-]+)\), '
                    r'direction=LT')
_CUSTOM_CALL = re.compile(r'custom_call_target="([^"]*)"')
_HOST_TRANSFER = re.compile(r'\s(?:infeed|outfeed|send|recv|send-done|recv-done)\(|'
                            r'is_host_transfer=true|custom_call_target="[^"]*callback[^"]*"')


@dataclasses.dataclass(frozen=True)
class WhileLoop:
  """One while loop of the optimized HLO: its trip count (None: data-dependent)."""
  op_name: str
  trip_count: int | None


@dataclasses.dataclass(frozen=True)
class CompiledStats:
  flops: float  # one call, each while body counted once
  temp_bytes: int  # XLA's temp allocation (not arguments or outputs)
  argument_bytes: int
  output_bytes: int
  while_loops: tuple[WhileLoop, ...]

  @property
  def static_loops(self) -> int:
    return sum(loop.trip_count is not None for loop in self.while_loops)

  @property
  def dynamic_loops(self) -> int:
    return sum(loop.trip_count is None for loop in self.while_loops)

  def to_dict(self) -> dict[str, Any]:
    return {'flops': self.flops, 'temp_bytes': self.temp_bytes,
            'argument_bytes': self.argument_bytes, 'output_bytes': self.output_bytes,
            'while_loops_static_trip_count': self.static_loops,
            'while_loops_dynamic_trip_count': self.dynamic_loops,
            'dynamic_loop_op_names': [l.op_name for l in self.while_loops
                                      if l.trip_count is None]}


def _computations(hlo_text: str) -> dict[str, list[str]]:
  """Each computation's name -> its lines (the header first)."""
  computations, lines = {}, None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header and line.rstrip().endswith('{'):
      lines = computations.setdefault(header.group(1), [])
    if lines is not None:
      lines.append(line)
  return computations


def _condition_bound(condition: list[str]) -> int | None:
  """N where a loop condition is `counter < constant(N)`, else None.

  XLA:TPU's optimized HLO keeps no `known_trip_count`; its counted loops keep this form.
  """
  constants = {m.group(1): int(m.group(2)) for m in map(_CONSTANT.match, condition) if m}
  for line in condition:
    bound = _BOUND.search(line)
    if bound and bound.group(2) in constants and bound.group(1) not in constants:
      return constants[bound.group(2)]
  return None


def while_loops(hlo_text: str) -> tuple[WhileLoop, ...]:
  """The `while` instructions of an HLO module's text, with their trip counts: XLA's
  `known_trip_count`, else the bound of a `counter < constant(N)` condition."""
  computations = None
  loops = []
  for line in hlo_text.splitlines():
    if ' while(' not in line or not _WHILE.search(line):
      continue
    trip = _TRIP_COUNT.search(line)
    trip_count = int(trip.group(1)) if trip else None
    condition = _CONDITION.search(line)
    if trip_count is None and condition:
      computations = computations or _computations(hlo_text)
      trip_count = _condition_bound(computations.get(condition.group(1), []))
    name = _OP_NAME.search(line)
    loops.append(WhileLoop(op_name=name.group(1) if name else '', trip_count=trip_count))
  return tuple(loops)


def custom_calls(hlo_text: str) -> dict[str, int]:
  """Custom-call target -> how many the module has."""
  calls: dict[str, int] = {}
  for target in _CUSTOM_CALL.findall(hlo_text):
    calls[target] = calls.get(target, 0) + 1
  return calls


def host_transfers(hlo_text: str) -> int:
  """Instructions that move data between device and host: infeed, outfeed, send / recv
  to the host, host callbacks."""
  return sum(1 for line in hlo_text.splitlines() if _HOST_TRANSFER.search(line))


def _cost(compiled) -> dict[str, float]:
  """`compiled.cost_analysis()` as one dict (older jax: one dict per computation)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return cost or {}


def compiled_stats(compiled) -> CompiledStats:
  """Stats of a `jax.stages.Compiled` (`jax.jit(f).lower(...).compile()`)."""
  cost = _cost(compiled)
  memory = compiled.memory_analysis()
  return CompiledStats(
      flops=float(cost.get('flops', 0.0)),
      temp_bytes=int(getattr(memory, 'temp_size_in_bytes', 0)),
      argument_bytes=int(getattr(memory, 'argument_size_in_bytes', 0)),
      output_bytes=int(getattr(memory, 'output_size_in_bytes', 0)),
      while_loops=while_loops(compiled.as_text()))


def accelerator_stats(compiled) -> dict[str, Any]:
  """What an accelerator's compiler says of a `jax.stages.Compiled`, per device.

  Memory is the device's plan (`memory_analysis`): arguments, outputs, temp and
  generated code, and their total less the outputs that alias (donated) arguments.
  FLOPs and bytes accessed count each while-loop body once.
  """
  memory = compiled.memory_analysis()
  cost = _cost(compiled)
  hlo = compiled.as_text()
  loops = while_loops(hlo)
  sizes = {key: int(getattr(memory, f'{key}_size_in_bytes', 0))
           for key in ('argument', 'output', 'temp', 'generated_code', 'alias')}
  return {
      'hbm_argument_bytes': sizes['argument'], 'hbm_output_bytes': sizes['output'],
      'hbm_temp_bytes': sizes['temp'], 'hbm_code_bytes': sizes['generated_code'],
      'hbm_alias_bytes': sizes['alias'],
      'hbm_total_bytes': (sizes['argument'] + sizes['output'] + sizes['temp']
                          + sizes['generated_code'] - sizes['alias']),
      'hbm_peak_bytes': int(getattr(memory, 'peak_memory_in_bytes', 0)),
      'flops': float(cost.get('flops', 0.0)),
      'bytes_accessed': float(cost.get('bytes accessed', 0.0)),
      'transcendentals': float(cost.get('transcendentals', 0.0)),
      'cost_model_seconds': (float(cost['optimal_seconds']) if 'optimal_seconds' in cost
                             else None),
      'while_loops_static_trip_count': sum(loop.trip_count is not None for loop in loops),
      'while_loops_dynamic_trip_count': sum(loop.trip_count is None for loop in loops),
      'while_loop_trip_counts': [loop.trip_count for loop in loops],
      'dynamic_loop_op_names': [loop.op_name for loop in loops if loop.trip_count is None],
      'custom_calls': custom_calls(hlo),
      'host_transfers': host_transfers(hlo),
  }
