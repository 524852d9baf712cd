"""What XLA says about a compiled program: FLOPs, temp memory, while loops.

These are properties of the program, not of the machine, so they can be measured on the
CPU for a GPU or TPU run: the FLOPs of one call (XLA's HloCostAnalysis, which counts a
while loop's body once), the temp buffer bytes XLA allocates beside arguments and
outputs, and the while loops with and without a trip count XLA knows at compile time.
On XLA:GPU a loop without a known trip count copies its predicate to the host and waits
for it every iteration; one with a known trip count runs its body back to back.
"""

import dataclasses
import re
from typing import Any

_WHILE = re.compile(r'=\s*\([^=]*\)\s+while\(|\swhile\(')
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_OP_NAME = re.compile(r'op_name="([^"]*)"')


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


def while_loops(hlo_text: str) -> tuple[WhileLoop, ...]:
  """The `while` instructions of an HLO module's text, with their known trip counts."""
  loops = []
  for line in hlo_text.splitlines():
    if ' while(' not in line or not _WHILE.search(line):
      continue
    trip = _TRIP_COUNT.search(line)
    name = _OP_NAME.search(line)
    loops.append(WhileLoop(op_name=name.group(1) if name else '',
                           trip_count=int(trip.group(1)) if trip else None))
  return tuple(loops)


def compiled_stats(compiled) -> CompiledStats:
  """Stats of a `jax.stages.Compiled` (`jax.jit(f).lower(...).compile()`)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0] if cost else {}
  memory = compiled.memory_analysis()
  return CompiledStats(
      flops=float((cost or {}).get('flops', 0.0)),
      temp_bytes=int(getattr(memory, 'temp_size_in_bytes', 0)),
      argument_bytes=int(getattr(memory, 'argument_size_in_bytes', 0)),
      output_bytes=int(getattr(memory, 'output_size_in_bytes', 0)),
      while_loops=while_loops(compiled.as_text()))
