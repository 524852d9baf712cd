"""What a benchmark result says of the machine and the moment it ran on."""

import datetime
import os
import platform


def cpu_name() -> str:
  """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def description() -> str:
  """'<CPU model>, <n> CPUs'."""
  return f'{cpu_name()}, {os.cpu_count()} CPUs'


def load_average() -> str:
  """The 1, 5 and 15 minute load averages, '0.52 0.40 0.33': other work on the CPUs."""
  return ' '.join(f'{v:.2f}' for v in os.getloadavg())


def now() -> str:
  """Local time to the second, ISO 8601."""
  return datetime.datetime.now().isoformat(timespec='seconds')
