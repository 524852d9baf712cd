#!/usr/bin/env bash
# The GPU benchmark in one run: the 1x config's train step (bfloat16 at two batch sizes,
# float32 at one) and inference (batch 8, both dtypes), each beside torchvision's Mask
# R-CNN on the same GPU in the same run, into one JSON and one Markdown file.
#
#   scripts/gpu_benchmark.sh [OUT_DIR]            # from anywhere; default OUT_DIR gpu_benchmark
#
# Environment: WHEELS (default .whl): wheels of the dependencies the machine lacks, made by
# scripts/fetch_gpu_wheels.sh where there is a network, installed here with no network;
# PEAK_TFLOPS (default 989, dense bfloat16 of an H100/H200 SXM) for the MFU column;
# CONFIG (default configs/maskrcnn_r50_fpn_1x.py); QUICK=1 runs the tiny config on 64x64
# with one timed step (the CPU test of this script). Without torch the comparison is
# skipped with a line saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_benchmark}
WHEELS=${WHEELS:-.whl}
PYTHON=${PYTHON:-python3}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
mkdir -p "$OUT"
start=$(date +%s)

if compgen -G "$WHEELS/*.whl" >/dev/null; then
  site=$(mktemp -d)/site
  $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" "$WHEELS"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# The Predictor and the forward alone compile one program: the cache compiles it once.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$(mktemp -d)}
$PYTHON -c "import jax; print('jax', jax.__version__, jax.devices())"

if [ "${QUICK:-0}" = 1 ]; then
  CONFIG=${CONFIG:-configs/tiny.py}
  common=(--image-size=64x64 --steps=1 --warmup=0 --instances=5)
  train_runs=("--batch=2 --dtype=float32")
  infer_runs=("--batch=2 --dtype=float32")
else
  CONFIG=${CONFIG:-configs/maskrcnn_r50_fpn_1x.py}
  common=(--steps=10 --warmup=2 --instances=10)
  train_runs=("--batch=2,8 --dtype=bfloat16" "--batch=8 --dtype=float32")
  infer_runs=("--batch=8 --dtype=bfloat16,float32")
fi
compare=(--compare=torchvision --peak-tflops="$PEAK_TFLOPS")
rm -f "$OUT/benchmark.md"
i=0
for mode in train infer; do
  if [ $mode = train ]; then runs=("${train_runs[@]}"); else runs=("${infer_runs[@]}"); fi
  for run in "${runs[@]}"; do
    # shellcheck disable=SC2086  # $run holds several flags
    $PYTHON scripts/benchmark.py --config="$CONFIG" --mode=$mode $run "${common[@]}" \
        "${compare[@]}" --output="$OUT/part$i.json" --markdown="$OUT/benchmark.md"
    i=$((i + 1))
  done
done
$PYTHON - "$OUT" "$start" <<'PY'
import glob, json, os, sys, time
out, start = sys.argv[1], float(sys.argv[2])
parts = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, 'part*.json')),
                                            key=lambda p: int(p[len(out) + 5:-5]))]
json.dump({'runs': parts, 'seconds': time.time() - start},
          open(os.path.join(out, 'gpu_benchmark.json'), 'w'), indent=1)
for p in glob.glob(os.path.join(out, 'part*.json')):
  os.remove(p)
print(f'wrote {out}/gpu_benchmark.json and {out}/benchmark.md in {time.time() - start:.0f} s')
PY
