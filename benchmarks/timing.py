"""The one timer of every benchmark: a stopwatch, timed calls and the host's peak memory.

A measured function is timed as a user meets it: compiled first where it compiles
(`Stopwatch` around `lower(...).compile()`), called once (`first_call_s`: whatever the
runtime still does on a first call), `warmup` untimed times, then `steps` timed times,
summarised by their median (robust to a machine shared with other jobs), min and max.
The clocks are arguments so that the tests can inject their own.
"""

import dataclasses
import resource
import statistics
import time
from typing import Any, Callable

Clock = Callable[[], float]


class Stopwatch:
  """Wall and CPU seconds between `start()` and `stop()`, or of a `with` block.

  `cpu_clock` defaults to this process's CPU time; the input benchmark passes one that
  adds its worker processes'.
  """

  def __init__(self, clock: Clock = time.perf_counter,
               cpu_clock: Clock = time.process_time):
    self._clock, self._cpu_clock = clock, cpu_clock
    self._start = self._cpu_start = None
    self.seconds = self.cpu_seconds = 0.0

  def start(self) -> 'Stopwatch':
    self._start, self._cpu_start = self._clock(), self._cpu_clock()
    return self

  def stop(self) -> float:
    """Sets and returns `seconds` (wall) since `start()`; sets `cpu_seconds`."""
    self.seconds = self._clock() - self._start
    self.cpu_seconds = self._cpu_clock() - self._cpu_start
    return self.seconds

  def __enter__(self) -> 'Stopwatch':
    return self.start()

  def __exit__(self, *exc_info) -> None:
    self.stop()


def time_once(fn: Callable[[], Any], clock: Clock = time.perf_counter) -> tuple[Any, float]:
  """(`fn()`, its wall seconds): a compile, an export, a load."""
  start = clock()
  result = fn()
  return result, clock() - start


@dataclasses.dataclass(frozen=True)
class Timing:
  """Wall seconds of one measured function: its first call and each timed call."""
  first_call_s: float
  times_s: tuple[float, ...]

  @property
  def median_s(self) -> float:
    return statistics.median(self.times_s)

  @property
  def min_s(self) -> float:
    return min(self.times_s)

  @property
  def max_s(self) -> float:
    return max(self.times_s)

  def to_json(self) -> dict[str, Any]:
    """The keys the benchmark JSON has always had: first call, median, every call."""
    return {'first_call_s': self.first_call_s, 'median_s': self.median_s,
            'times_s': list(self.times_s)}


def time_calls(fn: Callable[[], Any], steps: int, warmup: int,
               clock: Clock = time.perf_counter) -> Timing:
  """Times `fn` (which must block until its work is done): once, `warmup` untimed, `steps`.

  Raises ValueError where `steps` < 1: a median needs one timed call.
  """
  if steps < 1:
    raise ValueError(f'steps must be at least 1; got {steps}')
  _, first = time_once(fn, clock)
  for _ in range(warmup):
    fn()
  times = tuple(time_once(fn, clock)[1] for _ in range(steps))
  return Timing(first_call_s=first, times_s=times)


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


def host_memory(before_mb: float) -> dict[str, float]:
  """'host_peak_mb' now and 'host_growth_mb' over `before_mb` (a `host_peak_mb()`)."""
  peak = host_peak_mb()
  return {'host_peak_mb': peak, 'host_growth_mb': peak - before_mb}
