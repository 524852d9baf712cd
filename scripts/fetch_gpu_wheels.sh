#!/usr/bin/env bash
# Downloads, on a machine with the package registry, the wheels that scripts/gpu_benchmark.sh
# installs on a GPU machine without network: the project's dependencies that such a machine
# (jax with CUDA, flax, optax, orbax-checkpoint, torch, torchvision, opencv, numpy already
# there) lacks, for its Python (3.12 by default, x86-64 manylinux).
#
#   scripts/fetch_gpu_wheels.sh [DIR] [PYTHON_VERSION]      # default: .whl 3.12
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PY=${2:-3.12}
PIP=${PIP:-python3 -m pip}
mkdir -p "$DIR"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
# Pure-Python ones and binary ones alike; --no-deps: every missing dependency is named.
for package in ml-collections pycocotools tensorboardX grain array-record portpicker; do
  $PIP download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
      "${platforms[@]}" -d "$DIR" "$package"
done
ls "$DIR"
