"""benchmarks/timing.py and benchmarks/tables.py against hand-computed numbers and text."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import nms
from benchmarks import tables
from benchmarks import timing
from maskrcnn_jax.ops import nms as nms_ops


def _clock(*readings):
  """A clock that returns `readings` one after the other."""
  values = iter(readings)
  return lambda: next(values)


def test_time_calls_median_min_max_of_an_injected_clock():
  calls = []
  # First call 10 -> 15 (5 s); the warm-up call reads no clock; then 3, 1 and 2 s.
  clock = _clock(10.0, 15.0, 20.0, 23.0, 23.0, 24.0, 30.0, 32.0)
  measured = timing.time_calls(lambda: calls.append(1), steps=3, warmup=1, clock=clock)
  assert len(calls) == 1 + 1 + 3
  assert measured.first_call_s == 5.0 and measured.times_s == (3.0, 1.0, 2.0)
  assert (measured.median_s, measured.min_s, measured.max_s) == (2.0, 1.0, 3.0)
  assert measured.to_json() == {'first_call_s': 5.0, 'median_s': 2.0,
                                'times_s': [3.0, 1.0, 2.0]}


def test_time_calls_median_of_an_even_count_and_no_steps():
  clock = _clock(*itertools.accumulate([0.0, 1.0, 0.0, 4.0, 0.0, 2.0]))
  assert timing.time_calls(lambda: None, steps=2, warmup=0, clock=clock).median_s == 3.0
  with pytest.raises(ValueError, match='steps must be at least 1'):
    timing.time_calls(lambda: None, steps=0, warmup=0)


def test_stopwatch_and_time_once():
  watch = timing.Stopwatch(clock=_clock(1.0, 3.5), cpu_clock=_clock(0.25, 1.0))
  with watch:
    pass
  assert (watch.seconds, watch.cpu_seconds) == (2.5, 0.75)
  assert timing.time_once(lambda: 'done', clock=_clock(2.0, 2.5)) == ('done', 0.5)


def test_host_memory_is_the_peak_and_its_growth():
  memory = timing.host_memory(before_mb=0.0)
  assert memory['host_peak_mb'] == memory['host_growth_mb'] > 0
  assert timing.host_peak_mb() >= memory['host_peak_mb']  # a peak never falls


def test_markdown_table_exact_text():
  lines = tables.markdown_table(
      ['path', 'call s', 'same'],
      [['jax.jit', tables.cell(0.12345, 3), tables.cell(True)],
       ['onnx', tables.cell(None), tables.cell(False)],
       ['tf', 'not run', '']])
  assert '\n'.join(lines) == ('| path | call s | same |\n'
                              '|---|---|---|\n'
                              '| jax.jit | 0.123 | yes |\n'
                              '| onnx | - | NO |\n'
                              '| tf | not run | |')
  assert tables.cell('n/a', 0) == 'n/a' and tables.cell(1176.4, 0) == '1176'
  with pytest.raises(ValueError, match='a row of 1 cells under 3 columns'):
    tables.markdown_table(['a', 'b', 'c'], [['x']])


@pytest.mark.slow
def test_nms_table_and_the_early_exit_form_keep_the_same_boxes():
  rng = np.random.default_rng(0)
  boxes, scores, classes, valid = nms.random_case(rng, 60, 3)
  rounds = nms_ops.batched_nms(boxes, scores, classes, 0.5, 10, valid)[0]
  early = nms.early_exit_pass_nms(boxes, scores, 0.5, 10, valid, classes)
  np.testing.assert_array_equal(rounds, early)
  assert early.shape == (10,) and early.dtype == jnp.int32
  seconds = {'median_s': 0.002, 'min_s': 0.001, 'max_s': 0.0035}
  table = nms.markdown_table({'batch': 2, 'backend': 'cpu', 'steps': 3, 'cases': [
      {'case': 'RPN test', 'rounds': seconds, 'early_exit': dict(seconds, median_s=0.01)}]})
  assert table.splitlines()[-1] == '| RPN test | 2.0 (1.0-3.5) | 10.0 (1.0-3.5) |'
