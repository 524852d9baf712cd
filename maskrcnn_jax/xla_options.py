"""Backend-specific choices, in one place: XLA compiler options for the jitted model
functions (train step, init, inference) and the op forms chosen per backend
(`sum_roi_terms_in_loop`, `keep_last_frozen_output`, `order_layer_gradients`).

On XLA:CPU, jax 0.10 hands single dots, reduce fusions and convolutions to YNNPACK
(its default `xla_cpu_experimental_ynn_fusion_type`). YNNPACK's convolution gradients
run ~2.4x slower than XLA's own (Eigen) convolutions: a 3x3 conv on [128, 14, 14, 256]
takes 0.74 s against 0.31 s for its value and both gradients on 2 cores, and the
R50-FPN 512x512 train step 7.7 s against 4.1 s. So on the CPU our jits keep YNNPACK
for dots and reductions and leave convolutions to XLA; inference is unchanged or a
little faster (forward 1.2-1.3 s against 1.3-1.4 s).

XLA:CPU's default (concurrency-optimized) scheduler makes the transposed copies of the
saved activations that the kernel-gradient convolutions read early, in the forward pass,
and holds them to the backward beside the originals. Its memory-optimized scheduler
orders the same program for the smallest live set: the same values, a train step that
is no slower and needs much less temp memory (docs/benchmarks.md, "sessions 7-8").

The options are per jit, so nothing else in the process changes; a jaxlib that does
not know them gets none (with a warning) instead of failing to compile.
"""

import functools
import logging

import jax
import jax.numpy as jnp

CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type':
               'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE',
               'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}


@functools.cache
def _cpu_options_compile() -> bool:
  try:
    jax.jit(jnp.negative, compiler_options=CPU_OPTIONS).lower(1.0).compile()
  except Exception as error:  # pylint: disable=broad-except
    logging.warning('XLA:CPU compiler options %s not accepted (%s); compiling without them',
                    CPU_OPTIONS, str(error).splitlines()[0])
    return False
  return True


def compiler_options() -> dict[str, str] | None:
  """Options for `jax.jit(..., compiler_options=)`: CPU_OPTIONS on the CPU backend, else None."""
  if jax.default_backend() == 'cpu' and _cpu_options_compile():
    return dict(CPU_OPTIONS)
  return None


def sum_roi_terms_in_loop() -> bool:
  """Whether RoIAlign under differentiation adds its G * G * 4 gathered terms in a loop.

  Else unrolled, as always without differentiation (inference, exported programs). The
  loop has a static trip count (G * G * 4) and is chosen on XLA:CPU only. There the
  unrolled sum is one loop fusion, and XLA emits it a second time in the transposed
  [C, S, S, R] layout that the next conv's kernel gradient reads, walking all the
  gathered terms at a stride; the loop materialises the pooled features once in their
  own layout and the transpose is a plain copy (docs/benchmarks.md, session 5). On GPU
  and TPU the unrolled sum fuses into one kernel.
  """
  return jax.default_backend() == 'cpu'


def keep_last_frozen_output() -> bool:
  """Whether the train step gives the backbone's last frozen output (C2 in the 1x
  config) a buffer of its own that its backward consumers read.

  Chosen on XLA:CPU only. There fusion recomputes that tensor inside every consumer
  in the backward pass (the kernel gradients of the FPN's lateral conv and of the next
  stage's first block) from its stage's conv outputs (four 1x1-conv outputs for an
  R50's res2), and so holds those to the end of the step instead of the one tensor it
  needs (resnet.py, `_last_frozen_output`). Not measured on GPU or TPU, which keep the
  plain tensor.
  """
  return jax.default_backend() == 'cpu'


def order_layer_gradients() -> bool:
  """Whether the train step ties each layer's gradients together in the backward pass
  (`model.gradient_order.layer_boundary`): the input gradient after the layer's kernel
  and bias gradients, the kernel gradient after the input gradient.

  Chosen on XLA:CPU only, where its scheduler otherwise leaves the bias-gradient
  reductions to the end of the step and holds the cotangents they read, and where the
  copies of the donated kernels are measured. Not measured on GPU or TPU.
  """
  return jax.default_backend() == 'cpu'
