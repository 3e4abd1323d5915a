#!/usr/bin/env bash
# The GPU suite in one device call (issue 15), under 8 minutes on one H100/H200: bare forward
# vs raysight vs an nnsight 0.8 script (bf16, batches of 32 x 512 tokens; one layer, every
# layer, early stop), then the writer's throughput and its encoder threads. Results land in $OUT
# (suite.md, writer.md, pipeline.md, gpu.txt, suite.log).
#
# First, on this machine:  bash benchmarks/gpu_prepare.sh       (fills the ignored .gpu/)
# Then one device call:    run(command="bash benchmarks/gpu.sh", carry=[".gpu"], timeout_s=540)
# A CPU smoke run here:    SMOKE=1 OUT=/tmp/gpu-smoke bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/raysight-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [[ -n "${SMOKE:-}" ]]; then
  PY=${PY:-.venv/bin/python}
  PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute, the venv's link kept
  suite=(--device cpu --dtype float32 --batch 2 --seq 32 --batches 2 --batches-all 1)
  writer=(--rows 2000 --width 64 --repeat 1)
  pipeline=(--gb 0.02 --batch-tokens 256 --repeat 1 --methods raw,arrow-typed:2,parquet-bytes:2)
else
  PY=$(command -v python3)
  # what the GPU machine's image lacks travels as wheels (benchmarks/gpu_prepare.sh)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH="$PWD/src:/tmp/site"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
  suite=(--device cuda --dtype bfloat16 --batch 32 --seq 512 --batches 32 --batches-all 8
         --model-config .gpu/smollm2-135m)
  writer=(--rows 100000 --width 576 --repeat 2)
  pipeline=(--gb 0.5 --repeat 1)
fi
"$PY" -c "import sys, torch, transformers, pyarrow, pydantic; print(sys.version.split()[0], \
'torch', torch.__version__, 'transformers', transformers.__version__, 'pyarrow', \
pyarrow.__version__)" | tee -a "$OUT/gpu.txt"
timeout 420 "$PY" benchmarks/gpu_suite.py "${suite[@]}" 2> "$OUT/suite.log" | tee "$OUT/suite.md"
(cd benchmarks && timeout 90 "$PY" writer_throughput.py "${writer[@]}") | tee "$OUT/writer.md" \
  || echo "writer benchmark failed or ran out of time" | tee -a "$OUT/writer.md"
# the all-layer writer path with 1, 2 and 4 encoder threads against the disk's own speed (§15)
(cd benchmarks && timeout 60 "$PY" writer_pipeline.py "${pipeline[@]}") | tee "$OUT/pipeline.md" \
  || echo "writer pipeline benchmark failed or ran out of time" | tee -a "$OUT/pipeline.md"
