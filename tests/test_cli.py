"""The scripts' shared command line: one-line errors with their exit status, --help."""

import logging
import os
import subprocess
import sys

import pytest

from maskrcnn_jax import cli
from maskrcnn_jax import config
from tests.conftest import REPO_ROOT


def _run(script, *args, env=None):
  return subprocess.run([sys.executable, str(REPO_ROOT / 'scripts' / script), *args],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS='cpu', **(env or {})))


def _error_lines(stderr):
  """stderr without absl's log lines (I1202 ...)."""
  return [line for line in stderr.splitlines()
          if line and not (line[0] in 'IWE' and line[1:5].isdigit())]


@pytest.mark.parametrize('args, status, message', [
    (['--config.train.num_stepz=3'], 2,
     'train.py: error: unknown config key \'num_stepz\' Did you mean "num_steps" instead '
     'of "num_stepz"?'),
    (['--config=configs/nothere.py'], 2,
     "train.py: error: --config: [Errno 2] No such file or directory: 'configs/nothere.py'"),
    (['--config.data.train_annotations=/nowhere/train.json'], 1,
     'train.py: error: /nowhere/train.json: annotation file not found'),
])
@pytest.mark.slow
def test_a_mistake_prints_one_line_and_its_exit_status(tmp_path, args, status, message):
  result = _run('train.py', '--config=configs/shapes_demo.py', f'--workdir={tmp_path}', *args)
  assert result.returncode == status, result.stderr[-2000:]
  assert _error_lines(result.stderr) == [
      message, f'(--verbose or {cli.VERBOSE_ENV}=1 prints the traceback)']


@pytest.mark.slow
def test_verbose_prints_the_traceback(tmp_path):
  args = ['--config=configs/shapes_demo.py', f'--workdir={tmp_path}',
          '--config.train.num_stepz=3']
  for extra, env in ((['--verbose'], None), ([], {cli.VERBOSE_ENV: '1'})):
    result = _run('train.py', *args, *extra, env=env)
    assert result.returncode != 0
    assert 'Traceback (most recent call last)' in result.stderr
    assert 'num_stepz' in result.stderr.splitlines()[-1]


def test_a_missing_checkpoint_is_one_line(tmp_path):
  (tmp_path / 'a.png').write_bytes(b'')
  result = _run('predict.py', '--config=configs/tiny.py',
                f'--checkpoint={tmp_path / "nowhere"}', str(tmp_path))
  assert result.returncode == 1, result.stderr[-2000:]
  assert _error_lines(result.stderr)[-2] == (
      f'predict.py: error: no checkpoint directory at {tmp_path / "nowhere"}')


def test_help_lists_the_common_config_keys_with_defaults():
  result = _run('evaluate.py', '--help')  # absl's --help exits with status 1
  assert 'maskrcnn_jax/config.py' in result.stdout and '--verbose' in result.stdout
  defaults = config.default_config()
  for key in ('model.num_classes', 'train.base_lr', 'data.image_size', 'eval.batch_size'):
    section, name = key.split('.')
    assert f'  --config.{key}={defaults[section][name]!r}\n' in result.stdout, key
  assert '--config.model.rpn.nms_threshold' not in result.stdout  # the common keys only


def test_error_line():
  assert cli.error_line(KeyError('num_stepz')) == 'num_stepz'
  # Every line, the first (which names the problem) included.
  assert cli.error_line(ValueError('checkpoint x does not fit:\n  kernel (256, 5)\n'
                                   '  expected (256, 81)')) == (
      'checkpoint x does not fit: kernel (256, 5) expected (256, 81)')
  assert cli.error_line(ValueError('a\nb')) == 'a b'
  assert cli.error_line(ValueError()) == 'ValueError'


def test_a_long_error_is_cut_near_500_characters_on_a_word():
  words = ' '.join(f'key{i}' for i in range(400))  # 2,289 characters
  line = cli.error_line(ValueError(f'unexpected keys:\n{words}'))
  assert line.endswith(' ...') and 400 <= len(line) <= cli.MAX_ERROR_CHARS + 4
  kept = line[:-len(' ...')]
  assert f'unexpected keys: {words}'.startswith(kept + ' ')  # cut between two words
  unbroken = cli.error_line(ValueError('x' * 2000))
  assert unbroken == 'x' * cli.MAX_ERROR_CHARS + ' ...'


def test_a_usage_error_is_one_line_and_a_pointer_to_help(tmp_path):
  for args, message in (
      ([], 'evaluate.py: error: --checkpoint and --workdir are required (or --results)'),
      ([f'--checkpoint={tmp_path}', f'--workdir={tmp_path / "eval"}'],
       f'evaluate.py: error: --config is required: --checkpoint {tmp_path} is not in a '
       'training run (no config.json beside its checkpoints folder)')):
    result = _run('evaluate.py', *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert _error_lines(result.stderr) == [message, '(evaluate.py --help lists the flags)']
    assert result.stdout == ''  # no --help text


def test_library_noise_is_filtered_and_real_warnings_kept():
  def record(path, level, message):
    return logging.LogRecord('x', level, path, 1, message, None, None)

  quiet = cli._QuietLibraries()  # pylint: disable=protected-access
  orbax = '/site-packages/orbax/checkpoint/_src/metadata/checkpoint.py'
  bridge = '/site-packages/jax/_src/xla_bridge.py'
  assert not quiet.filter(record(orbax, logging.INFO, 'Saving checkpoint'))
  assert not quiet.filter(record(orbax, logging.WARNING, 'Metadata file does not exist: x'))
  assert quiet.filter(record(orbax, logging.WARNING, 'Something else went wrong'))
  assert not quiet.filter(record(bridge, logging.INFO, "Unable to initialize backend 'tpu'"))
  assert quiet.filter(record(bridge, logging.WARNING, 'An NVIDIA GPU may be present'))
  assert quiet.filter(record('/work/main/maskrcnn_jax/train_log.py', logging.INFO, 'step 2'))
