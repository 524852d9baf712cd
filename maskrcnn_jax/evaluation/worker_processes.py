"""Spawned worker processes for evaluation's host work (paste + RLE, COCOeval tables).

JAX runs threads, so forking after it started is unsafe: the workers are spawned, each
started here with a bare `__main__` so that it does not re-run the parent script's
imports.
"""

import concurrent.futures
import multiprocessing
import os
import signal
import sys
import types
from typing import Any


def num_workers(requested: int) -> int:
  """`eval.host_workers`: -1 -> one process per core (at most 8); 0 -> none."""
  if requested < -1:
    raise ValueError(f'config.eval.host_workers must be -1, 0 or positive; got {requested}')
  return min(os.cpu_count() or 1, 8) if requested == -1 else requested


def process_pool(workers: int, started: bool = False
                 ) -> concurrent.futures.ProcessPoolExecutor:
  """`workers` >= 1 spawned processes (for `batch_results`, or coco_eval's tables).

  Every process is launched here, with one no-op task each, while `__main__` is a bare
  module: a spawned process otherwise re-runs the imports of the parent's main script
  (a script's: jax, the trainer; ~3 s of CPU per process) that the workers never use.
  With `started`, this returns only once every process has run its task (each waits at
  a barrier for the others), so a timed run that follows measures no start-up.
  """
  context = multiprocessing.get_context('spawn')
  barrier = context.Barrier(workers) if started else None
  pool = concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=context, initializer=_keep_barrier, initargs=(barrier,))
  main = sys.modules['__main__']
  sys.modules['__main__'] = types.ModuleType('__main__')
  try:  # each submit launches a process while none is idle
    first_tasks = [pool.submit(_wait_for_all_workers) for _ in range(workers)]
  finally:
    sys.modules['__main__'] = main
  if started:
    for future in first_tasks:
      future.result()
  return pool


_barrier = None  # a worker process's start barrier (`process_pool(started=True)`)


def _keep_barrier(barrier: Any) -> None:
  global _barrier  # pylint: disable=global-statement
  # A terminal's Ctrl-C reaches the whole process group; the parent decides what stops.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  _barrier = barrier


def _wait_for_all_workers() -> None:
  if _barrier is not None:
    _barrier.wait(timeout=300)
