"""Per-platform choices, made once where a program is jitted: XLA options and op forms.

Model and ops code never ask which backend they run on. What differs per platform is
decided here and handed over explicitly: compiler options through `jit`, op forms as
arguments (`roi_align_sum_in_loop` becomes `MaskRCNN(roi_align_sum_in_loop=...)`).
The platform is that of the devices the program is compiled for (`mesh_platform`), not
the process's default backend: a CPU process compiling ahead of time for a TPU
topology (benchmarks/tpu_aot.py) gets TPU choices. Each choice stays only while it
speeds up something a user runs (docs/benchmarks.md, "Backend choices").

On XLA:CPU, jax 0.10 hands single dots, reduce fusions and convolutions to YNNPACK
(`xla_cpu_experimental_ynn_fusion_type`), whose convolution gradients run about 2.4x
slower than XLA's own: our jits keep YNNPACK for dots and reductions and leave
convolutions to XLA. The options are per jit, so nothing else in the process changes;
a jaxlib that does not know them gets none (with a warning) instead of failing.
"""

import functools
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp

CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type':
               'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}


@functools.cache
def _cpu_options_compile() -> bool:
  try:
    jax.jit(jnp.negative, compiler_options=CPU_OPTIONS).lower(1.0).compile()
  except Exception as error:  # pylint: disable=broad-except
    logging.warning('XLA:CPU compiler options %s not accepted (%s); compiling without them',
                    CPU_OPTIONS, str(error).splitlines()[0])
    return False
  return True


def mesh_platform(mesh: jax.sharding.Mesh) -> str:
  """The platform ('cpu', 'gpu', 'tpu') of the devices of `mesh`."""
  return mesh.devices.flat[0].platform


def _platform_or_default(platform: str | None) -> str:
  return jax.default_backend() if platform is None else platform


def compiler_options(platform: str | None = None) -> dict[str, str] | None:
  """Options for `jax.jit(..., compiler_options=)` of a program for `platform` (None: the
  default backend's devices): CPU_OPTIONS for the CPU, else None."""
  if _platform_or_default(platform) == 'cpu' and _cpu_options_compile():
    return dict(CPU_OPTIONS)
  return None


def jit(fun: Callable[..., Any], platform: str | None = None, **jit_kwargs) -> Any:
  """`jax.jit(fun, **jit_kwargs)` with `compiler_options(platform)`."""
  return jax.jit(fun, compiler_options=compiler_options(platform), **jit_kwargs)


def roi_align_sum_in_loop(platform: str | None = None) -> bool:
  """RoIAlign's form under differentiation (ops/roi_align.py): the loop on XLA:CPU.

  There the unrolled sum is emitted a second time in the layout the next conv's kernel
  gradient reads, and the demo's train step takes 1.5x as long; on GPU and TPU the
  unrolled sum is one fused kernel.
  """
  return _platform_or_default(platform) == 'cpu'
