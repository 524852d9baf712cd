"""Two processes on localhost train, checkpoint, restore, and match one process.

Each of the two processes (tests/tools/multiprocess_worker.py) has 2 simulated CPU
devices and joins the other through jax.distributed, with gloo for the cross-process
collectives. Together they run the tiny config on a global batch of 4 over a 4-device
data mesh: N steps, a checkpoint written by both, a restore into a fresh state, N more
steps. The reference is one process with 4 devices taking the same 2N steps on the
same global batches without a restart.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.tools import multiprocess_worker as worker

STEPS = 2  # N: steps before and after the restart


TIMEOUT = 600  # seconds for all three processes; they take about 2 minutes on 2 busy cores


WORKER = REPO_ROOT / 'tests' / 'tools' / 'multiprocess_worker.py'


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _launch(tmp_path: pathlib.Path, name: str,
            *args: str) -> tuple[subprocess.Popen, pathlib.Path]:
  """Starts one worker (own data root, output in tmp_path/<name>.log)."""
  log = tmp_path / f'{name}.log'
  command = [sys.executable, str(WORKER), '--data_root', str(tmp_path / f'shapes_{name}'),
             '--steps', str(STEPS), *args]
  with open(log, 'w') as f:
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT)
  return process, log


def _wait(processes: dict[str, subprocess.Popen], timeout: float) -> dict[str, int | None]:
  """Exit codes by name; None for a process killed at the timeout or after a peer failed.

  A failed peer leaves the other blocked in a collective, so the rest are killed then.
  """
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    codes = {name: p.poll() for name, p in processes.items()}
    if all(code is not None for code in codes.values()):
      return codes
    if any(code not in (None, 0) for code in codes.values()):
      break
    time.sleep(0.5)
  for process in processes.values():
    if process.poll() is None:
      process.kill()
  for process in processes.values():
    process.wait()
  return {name: (p.returncode if p.returncode is not None and p.returncode >= 0 else None)
          for name, p in processes.items()}


@pytest.mark.slow
def test_two_processes_match_one_and_resume_from_their_checkpoint(tmp_path):
  port = _free_port()
  launched = {
      f'process_{i}': _launch(tmp_path, f'process_{i}', '--process_id', str(i),
                              '--num_processes', '2', '--coordinator', f'localhost:{port}',
                              '--workdir', str(tmp_path / 'two'), '--restart')
      for i in range(2)}
  launched['reference'] = _launch(tmp_path, 'reference', '--workdir', str(tmp_path / 'one'))
  codes = _wait({name: p for name, (p, _) in launched.items()}, TIMEOUT)
  logs = {name: log.read_text() for name, (_, log) in launched.items()}
  for name, code in codes.items():
    if code == worker.GLOO_UNAVAILABLE:
      reason = next(line for line in logs[name].splitlines()
                    if line.startswith('GLOO_UNAVAILABLE'))
      pytest.skip(f'this jaxlib has no gloo CPU collectives: {reason}')
  report = '\n'.join(f'--- {name} (exit code {codes[name]}; None = killed) ---\n'
                     f'{text[-3000:]}' for name, text in logs.items())
  assert all(code == 0 for code in codes.values()), report

  two = [json.loads((tmp_path / 'two' / f'result_{i}.json').read_text()) for i in range(2)]
  one = json.loads((tmp_path / 'one' / 'result_0.json').read_text())
  for i, result in enumerate(two):
    assert (result['process_index'], result['process_count'], result['device_count'],
            result['local_device_count']) == (i, 2, 4, 2), result
  assert (one['process_count'], one['device_count']) == (1, 4), one

  # The restart: both processes read back exactly what they saved, with the shardings
  # of the state they restored into, and went on without a second compilation.
  assert sorted(os.listdir(tmp_path / 'two' / 'checkpoints')) == [str(STEPS)]
  for result in two:
    restore = result['restore']
    assert restore['latest_step'] == restore['step'] == STEPS, restore
    assert restore['max_abs_difference'] == 0.0, restore
    assert restore['fresh_max_abs_difference'] > 0.1, restore  # the restore replaced it
    assert restore['same_shardings_as_like'], restore
    assert result['final_step'] == 2 * STEPS and result['compilations'] == 1, result

  # Metrics are replicated outputs: both processes hold the same numbers.
  assert two[0]['metrics'] == two[1]['metrics']
  # Against one process: each device computes the same one image in both runs; only the
  # cross-device sums (batch means, the gradient all-reduce) add in another order (gloo
  # between processes), measured at <= 2 float32 ulps (1.5e-7 relative) over the 4 steps.
  # 2e-5 leaves room for that to grow through a few SGD steps and stays far below the
  # 1e-3 by which every loss changes from step to step (and between the hosts' examples).
  assert len(two[0]['metrics']) == len(one['metrics']) == 2 * STEPS
  for step, (got, want) in enumerate(zip(two[0]['metrics'], one['metrics']), start=1):
    for name in worker.METRICS:
      np.testing.assert_allclose(got[name], want[name], rtol=2e-5,
                                 err_msg=f'step {step} {name}')
