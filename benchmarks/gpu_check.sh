#!/usr/bin/env bash
# The GPU issue's device check, as one command on the device machine (repo root, $OUT set):
# the GPU-marked tests, then benchmarks/quantize.py --device gpu writing $OUT/gpu.json as it
# goes. The machine's image has jax 0.11 but no xdsl: the wheels jaxlite needs beyond it
# travel in .whl/ (see docs/ARCHITECTURE.md "GPU device check"), and the checkout runs from
# PYTHONPATH (native CPU kernels are not built there; on a GPU every op runs through XLA).
#
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=560)
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 JAXLITE_BUILD_NATIVE=0
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
timeout 150 python3 -m pytest -q -o addopts="" -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/tests.log"
timeout "${BENCH_SECONDS:-330}" python3 benchmarks/quantize.py --device gpu --reps 20 --json "$OUT/gpu.json" \
  2>&1 | tee "$OUT/bench.log"
echo "done: tests rc=${PIPESTATUS[0]}"
