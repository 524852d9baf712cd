"""One process of tests/train/test_multiprocess.py: train, checkpoint, restore, train on.

  python tests/tools/multiprocess_worker.py --process_id I --num_processes P \
      --coordinator localhost:PORT --data_root R --workdir W --steps N [--restart]

The run has 4 simulated CPU devices in all (4 / P per process, cross-process collectives
through gloo) and a global batch of 4 tiny-config shapes images, each process feeding
its 4 / P examples. It takes 2N train steps; with --restart it saves the TrainState
after N steps (every process calls the save), restores it into a freshly initialised
state with the same shardings and a fresh input stream, and takes the other N from
there. Every process writes `W/result_<I>.json`: its per-step losses, what the restore
gave back, and the device layout it ran on. P = 1 (no coordinator) is the
single-process reference.

Exits with GLOO_UNAVAILABLE, after a line starting 'GLOO_UNAVAILABLE:', when this jax
cannot make gloo CPU collectives.
"""

import argparse
import json
import os
import pathlib
import sys
import time

GLOBAL_DEVICES = 4
GLOBAL_BATCH = 4
GLOO_UNAVAILABLE = 77
METRICS = ('rpn_cls', 'rpn_box', 'cls', 'box', 'mask', 'total', 'grad_norm')
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--process_id', type=int, default=0)
  parser.add_argument('--num_processes', type=int, default=1, choices=(1, 2, 4))
  parser.add_argument('--coordinator', default='',
                      help='host:port of process 0; needed when --num_processes > 1')
  parser.add_argument('--data_root', required=True,
                      help='where this process writes the shapes images; one per process')
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--steps', type=int, default=2, help='N: steps before the restart')
  parser.add_argument('--restart', action='store_true',
                      help='save after N steps and continue from the restored state')
  args = parser.parse_args()
  if args.num_processes > 1 and not args.coordinator:
    parser.error('--num_processes > 1 needs --coordinator')
  return args


def _log(message: str, start: float = time.time()) -> None:
  print(f'[{time.time() - start:6.1f} s] {message}', flush=True)


def _gloo_unavailable(error: BaseException) -> None:
  print(f'GLOO_UNAVAILABLE: {type(error).__name__}: {error}', flush=True)
  sys.exit(GLOO_UNAVAILABLE)


def _start_jax(args: argparse.Namespace):
  """Imports jax with this process's devices and joins the others; returns jax."""
  # Before jax is imported: the device count is fixed when the CPU backend starts.
  os.environ['XLA_FLAGS'] = (f'--xla_force_host_platform_device_count='
                             f'{GLOBAL_DEVICES // args.num_processes}')
  os.environ['JAX_PLATFORMS'] = 'cpu'
  import jax  # pylint: disable=import-outside-toplevel
  try:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  except (AttributeError, ValueError) as error:  # no such option, or no 'gloo' value
    _gloo_unavailable(error)
  sys.path.insert(0, str(REPO_ROOT))
  from maskrcnn_jax.runtime import distributed  # pylint: disable=import-outside-toplevel
  if args.num_processes > 1:
    distributed.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  try:
    jax.devices()  # starts the CPU backend, which builds the gloo collectives
  except Exception as error:  # pylint: disable=broad-exception-caught
    if 'gloo' in str(error).lower():
      _gloo_unavailable(error)
    raise
  assert jax.process_count() == args.num_processes, jax.process_count()
  assert jax.device_count() == GLOBAL_DEVICES, jax.devices()
  return jax


def _max_abs_difference(jax, a, b) -> float:
  """Largest |a - b| over all leaves of two pytrees of the same structure."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  diffs = jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)),
                                initial=0.0)), a, b))
  return max(diffs)


def main() -> None:
  args = _parse_args()
  jax = _start_jax(args)
  # pylint: disable=import-outside-toplevel
  from maskrcnn_jax import checkpoint
  from maskrcnn_jax.runtime import distributed
  from maskrcnn_jax.train import step as step_lib
  from maskrcnn_jax.data import pipeline
  from tests.train.test_train import tiny_config
  # pylint: enable=import-outside-toplevel

  config = tiny_config(args.data_root)
  dataset = pipeline.load_split(config.data, 'train')
  mesh = distributed.data_mesh()
  model, optimizer, state = step_lib.create_train_state(config, jax.random.key(0))
  state = distributed.replicate(state, mesh)
  _log(f'process {jax.process_index()} of {jax.process_count()}: state on '
       f'{jax.device_count()} devices')
  step_fn = step_lib.jit_train_step(model, optimizer, config.train, mesh)
  key = jax.random.key(1)

  def run_steps(state, start, count):
    history = []
    with pipeline.Batches(dataset, config.data, GLOBAL_BATCH, train=True, seed=0,
                          start_step=start, process_index=jax.process_index(),
                          process_count=jax.process_count()) as batches:
      for _, batch in zip(range(count), batches):
        state, metrics = step_fn(state, distributed.host_batch_to_global(batch, mesh), key)
        metrics = jax.device_get(metrics)
        history.append({name: float(metrics[name]) for name in METRICS})
        _log(f'step {start + len(history)}: total loss {history[-1]["total"]:.6f}')
    return state, history

  result = {'process_index': jax.process_index(), 'process_count': jax.process_count(),
            'device_count': jax.device_count(), 'local_device_count': jax.local_device_count()}
  if args.restart:
    state, history = run_steps(state, 0, args.steps)
    saved = jax.device_get(state)
    directory = os.path.join(args.workdir, 'checkpoints')
    checkpoint.save_train_state(directory, args.steps, state, keep=2)
    _log(f'saved step {args.steps} in {directory}')
    _, _, fresh = step_lib.create_train_state(config, jax.random.key(7))
    fresh = distributed.replicate(fresh, mesh)
    restored = checkpoint.restore_train_state(directory, args.steps, like=fresh)
    _log('restored')
    same_shardings = jax.tree.leaves(jax.tree.map(
        lambda r, f: r.sharding == f.sharding, restored, fresh))
    result['restore'] = {
        'latest_step': checkpoint.latest_train_step(directory),
        'step': int(jax.device_get(restored.step)),
        'max_abs_difference': _max_abs_difference(jax, jax.device_get(restored), saved),
        'fresh_max_abs_difference': _max_abs_difference(jax, jax.device_get(fresh), saved),
        'same_shardings_as_like': all(same_shardings),
    }
    state, more = run_steps(restored, int(jax.device_get(restored.step)), args.steps)
    history += more
  else:
    state, history = run_steps(state, 0, 2 * args.steps)
  result['final_step'] = int(jax.device_get(state.step))
  result['compilations'] = step_fn._cache_size()  # pylint: disable=protected-access
  result['metrics'] = history
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, f'result_{args.process_id}.json'), 'w') as f:
    json.dump(result, f, indent=1)
  print('ok', flush=True)


if __name__ == '__main__':
  main()
