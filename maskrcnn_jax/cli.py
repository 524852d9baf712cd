"""What every script in scripts/ shares: errors in one line, and --help's config keys.

A mistake (an unknown config key, a missing config file or checkpoint, bad data) prints
one line, `<script>: error: <message>`, and exits with status 2 when it was met while
reading the command line, 1 when met while running. `--verbose` (or
MASKRCNN_JAX_VERBOSE=1) prints the full traceback instead.
"""

import ast
import logging
import os
import sys
from typing import Callable

from absl import app
from absl import flags

from maskrcnn_jax import config as config_lib

VERBOSE_ENV = 'MASKRCNN_JAX_VERBOSE'
flags.DEFINE_bool('verbose', False, f'print the full traceback of an error (or set '
                  f'{VERBOSE_ENV}=1)')

# The keys a new user changes first, listed by --help with config.py's defaults.
COMMON_KEYS = (
    'model.num_classes', 'model.dtype', 'model.backbone.depth',
    'data.dataset', 'data.train_annotations', 'data.train_images', 'data.val_annotations',
    'data.val_images', 'data.image_size', 'data.min_size', 'data.max_size',
    'data.num_workers',
    'train.batch_size', 'train.num_steps', 'train.base_lr', 'train.warmup_steps',
    'train.lr_steps', 'train.checkpoint_every', 'train.eval_every', 'train.log_every',
    'train.keep_checkpoints', 'train.init_checkpoint',
    'eval.batch_size', 'eval.mask_threshold',
)


class _QuietLibraries(logging.Filter):
  """Drops what libraries log that a user has nothing to do about.

  Orbax's per-save INFO chatter and its warning that a training checkpoint's item has
  no step metadata (it is one level up); jax's INFO that it found no TPU. Their other
  warnings and errors still show.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    if '/orbax/' in record.pathname:
      return record.levelno > logging.WARNING or (
          record.levelno == logging.WARNING
          and not record.getMessage().startswith('Metadata file does not exist'))
    return record.levelno >= logging.WARNING or 'xla_bridge' not in record.pathname


def quiet_library_logs() -> None:
  """Installs `_QuietLibraries` on the root logger's handlers (absl's included)."""
  for handler in logging.getLogger().handlers + logging.getLogger('absl').handlers:
    handler.addFilter(_QuietLibraries())


def help_text(config_keys: bool) -> str:
  """What `run` appends to the script's --help: --verbose and maybe `COMMON_KEYS`."""
  lines = ['', f'Errors print one line; --verbose (or {VERBOSE_ENV}=1) prints the traceback.']
  if config_keys:
    defaults = config_lib.default_config()
    lines += ['', 'Config keys most often set, with the defaults of maskrcnn_jax/config.py',
              '(the --config file may change them; every other key is in config.py):']
    for key in COMMON_KEYS:
      value = defaults
      for part in key.split('.'):
        value = value[part]
      lines.append(f'  --config.{key}={value!r}')
  return '\n'.join(lines) + '\n'


def verbose() -> bool:
  """--verbose or MASKRCNN_JAX_VERBOSE, read from argv: true before flags are parsed."""
  return (os.environ.get(VERBOSE_ENV, '').lower() not in ('', '0', 'false')
          or any(arg.lower() in ('--verbose', '--verbose=true', '--verbose=1')
                 for arg in sys.argv))


def error_line(error: BaseException) -> str:
  """One line for `error`: its message, or the last line of a multi-line one.

  KeyError and ml_collections' AttributeError quote their message (repr): unquoted here.
  """
  message = str(error)
  if message[:1] in '\'"':
    try:
      message = str(ast.literal_eval(message))
    except (ValueError, SyntaxError):
      pass
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  return ' '.join(lines) if len(lines) <= 2 else lines[-1]


def exit_with_error(error: BaseException, status: int, prefix: str = '') -> None:
  """Prints `error` as one line (or its traceback when verbose) and exits."""
  if verbose():
    raise error
  name = os.path.basename(sys.argv[0]) if sys.argv else 'error'
  print(f'{name}: error: {prefix}{error_line(error)}\n(--verbose or {VERBOSE_ENV}=1 prints the '
        'traceback)', file=sys.stderr)
  sys.exit(status)


def run(main: Callable[[list[str]], None], config_keys: bool = True) -> None:
  """absl's app.run(main) with `exit_with_error` for any exception.

  Args:
    main: the script's main(argv).
    config_keys: list `COMMON_KEYS` in --help (scripts taking --config).
  """
  module = sys.modules['__main__']
  module.__doc__ = (module.__doc__ or '') + help_text(config_keys)
  started = False

  def started_main(argv):
    nonlocal started
    quiet_library_logs()  # absl's handler exists from here on
    for name in list(flags.FLAGS):
      try:
        # A config file that failed to load raises only when its value is first used.
        getattr(flags.FLAGS[name].value, 'to_dict', None)
      except Exception as error:  # pylint: disable=broad-except
        exit_with_error(error, 2, f'--{name}: ')
    started = True
    return main(argv)

  try:
    app.run(started_main)
  except (SystemExit, KeyboardInterrupt):
    raise
  except Exception as error:  # pylint: disable=broad-except
    if started:
      exit_with_error(error, 1)
    # ml_collections names only the last part of an unknown --config.<key>.
    unknown_key = isinstance(error, (AttributeError, KeyError))
    exit_with_error(error, 2, 'unknown config key ' if unknown_key else '')
