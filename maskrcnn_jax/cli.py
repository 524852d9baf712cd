"""What every script in scripts/ shares: errors in one line, --help's config keys, and
the config of a run's checkpoint.

A mistake (an unknown config key, a missing config file or checkpoint, bad data) prints
one line, `<script>: error: <message>`, and exits with status 2 when it was met while
reading the command line (a usage error included: a pointer to --help follows it), 1
when met while running. `--verbose` (or MASKRCNN_JAX_VERBOSE=1) prints the full
traceback instead.

Scripts that read a checkpoint define --config with `define_config_flag` and read it
with `run_config`: a training run's checkpoint brings its saved config.json, so --config
is optional there and `--config.<key>=<value>` overrides apply on top of it.
"""

import ast
import logging
import os
import sys
from typing import Callable

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from maskrcnn_jax import config as config_lib
from maskrcnn_jax.train import workdir as workdir_lib

VERBOSE_ENV = 'MASKRCNN_JAX_VERBOSE'
MAX_ERROR_CHARS = 500  # an error line longer than this is cut; --verbose shows it whole
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
  """One line for `error`: its message's lines joined, shortened past `MAX_ERROR_CHARS`.

  KeyError and ml_collections' AttributeError quote their message (repr): unquoted here.
  """
  message = str(error)
  if message[:1] in '\'"':
    try:
      message = str(ast.literal_eval(message))
    except (ValueError, SyntaxError):
      pass
  line = ' '.join(line.strip() for line in message.splitlines() if line.strip())
  if not line:
    return type(error).__name__
  if len(line) <= MAX_ERROR_CHARS:
    return line
  cut = line[:MAX_ERROR_CHARS]
  space = cut.rfind(' ', MAX_ERROR_CHARS * 4 // 5)  # end on a word where one is near
  return (cut[:space] if space > 0 else cut) + ' ...'


def exit_with_error(error: BaseException, status: int, prefix: str = '',
                    hint: str | None = None, line: str | None = None) -> None:
  """Prints `error` as one line and `hint` (default: how to see the traceback), and exits.

  `line` replaces `error_line(error)`. With --verbose the error is raised instead, for
  its traceback.
  """
  if verbose():
    raise error
  name = os.path.basename(sys.argv[0]) if sys.argv else 'error'
  hint = hint or f'--verbose or {VERBOSE_ENV}=1 prints the traceback'
  print(f'{name}: error: {prefix}{line or error_line(error)}\n({hint})', file=sys.stderr)
  sys.exit(status)


def define_config_flag() -> flags.FlagHolder:
  """--config for a script reading a checkpoint: a configs/*.py file, `run_config` reads it.

  Its default is maskrcnn_jax/config.py (its `get_config()`, the package defaults), so
  that ml_collections accepts `--config.<key>=<value>` overrides without --config: they
  apply to a run's saved config (`run_config`).
  """
  holder = config_flags.DEFINE_config_file(
      'config', config_lib.__file__, "a configs/*.py file; optional with a training run's "
      '--checkpoint, whose saved config.json it replaces')
  flag = flags.FLAGS['config']
  flag.default_as_str = "the run's config.json found from --checkpoint"
  # Listed by the script's --help, with the flags the script defines itself.
  flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  return holder


def config_given() -> bool:
  """Whether the command line has --config or any --config.<key> override."""
  flag = flags.FLAGS['config']
  return bool(flag.present or config_flags.get_override_values(flag))


def _note_differences(run: str, config: ml_collections.ConfigDict) -> None:
  """One line on stderr naming where --config differs from the run's saved config.

  Keys that cannot change what the model predicts (paths, the training recipe: see
  `workdir_lib.changes_inference`) are only counted; nothing is printed if only they do,
  nor if the saved config cannot be read (--config does not need it).
  """
  try:
    saved = workdir_lib.load_run_config(run, config_lib.default_config())
  except (OSError, ValueError) as error:
    logging.warning("not comparing --config with the run's saved config: %s", error)
    return
  differences = workdir_lib.config_differences(saved, config)
  meaningful = [k for k in differences if workdir_lib.changes_inference(k)]
  if not meaningful:
    return
  shown = ', '.join(f'{k} {differences[k][0]!r} -> {differences[k][1]!r}'
                    for k in meaningful[:6])
  others = len(differences) - len(meaningful)
  print(f'note: --config differs from {os.path.join(run, workdir_lib.CONFIG_FILE)} in '
        f'{shown}{" ..." if len(meaningful) > 6 else ""}'
        f'{f" (and {others} keys that do not change predictions)" if others else ""}; '
        'using --config (leave it out to use the saved config)', file=sys.stderr)


def run_config(checkpoint_path: str | None) -> ml_collections.ConfigDict:
  """The config a script reading `checkpoint_path` runs with.

  --config given: that config and its overrides (a one-line note on stderr names the
  keys where it differs from the saved config of the checkpoint's training run, if
  any). Else the saved config of the checkpoint's training run
  (`workdir_lib.find_run`, `workdir_lib.load_run_config`) with the --config.<key>
  overrides applied on top.

  Raises:
    app.UsageError: no --config and `checkpoint_path` belongs to no training run.
  """
  flag = flags.FLAGS['config']
  run = workdir_lib.find_run(checkpoint_path) if checkpoint_path else None
  if flag.present:
    if run is not None:
      _note_differences(run, flag.value)
    return flag.value
  if run is None:
    raise app.UsageError(
        f'--config is required: --checkpoint {checkpoint_path} is not in a training run '
        f'(no {workdir_lib.CONFIG_FILE} beside its checkpoints folder)' if checkpoint_path
        else '--config is required')
  config = workdir_lib.load_run_config(run, config_lib.default_config())
  config.update_from_flattened_dict(config_flags.get_override_values(flag))
  return config


def run(main: Callable[[list[str]], None], config_keys: bool = True) -> None:
  """absl's app.run(main) with `exit_with_error` for any exception.

  Args:
    main: the script's main(argv).
    config_keys: list `COMMON_KEYS` in --help (scripts taking --config).
  """
  module = sys.modules['__main__']
  module.__doc__ = (module.__doc__ or '') + help_text(config_keys)
  script = os.path.basename(sys.argv[0]) if sys.argv else 'the script'
  started = False

  def started_main(argv):
    nonlocal started
    quiet_library_logs()  # absl's handler exists from here on
    for name in list(flags.FLAGS):
      try:
        # A config file that failed to load raises only when its value is first used.
        getattr(flags.FLAGS[name].value, 'to_dict', None)
      except Exception as error:  # pylint: disable=broad-except
        # ml_collections wraps the cause (the file's error) in lines of its attempts.
        lines = str(error).strip().splitlines() or ['']
        exit_with_error(error, 2, f'--{name}: ', line=lines[-1].strip() or None)
    started = True
    try:
      return main(argv)
    except app.UsageError as error:  # absl would print the whole --help before it
      exit_with_error(error, 2, hint=f'{script} --help lists the flags')

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
