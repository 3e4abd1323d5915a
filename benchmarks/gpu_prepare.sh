#!/usr/bin/env bash
# Prepares, on this (CPU) machine, what benchmarks/gpu.sh needs on a lent GPU machine, in the
# git-ignored folder .gpu/ (carry it: device run with carry [".gpu"]):
#   .gpu/smollm2-135m/  SmolLM2-135M's config and tokenizer, no weights (gpu_suite.py builds a
#                       random-weight checkpoint there: the timing is the same, and 540 MB of
#                       weights would not fit the 64 MiB a device call carries)
#   .gpu/whl/           Python 3.12 wheels of what raysight and nnsight need that the GPU
#                       machine's image lacks (see /work/.library/device/KINDS.md)
#   bash benchmarks/gpu_prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .gpu/smollm2-135m .gpu/whl
src=$("$PY" -c "from raysight.models.bundled import resolve_bundled as r; print(r('bundled:smollm2-135m-instruct'))")
for f in config.json generation_config.json tokenizer.json tokenizer_config.json chat_template.jinja; do
  cp "$src/$f" .gpu/smollm2-135m/
done
# the versions this project is tested with; --no-deps: each one it needs is named here
pkgs=(
  "pydantic==$("$PY" -c 'import pydantic; print(pydantic.VERSION)')"
  "pydantic-core==$("$PY" -c 'import pydantic_core; print(pydantic_core.__version__)')"
  annotated-types typing-inspection
  "nnsight==$("$PY" -c 'import importlib.metadata as m; print(m.version("nnsight"))')"
  greenlet websocket-client zstandard
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/whl "${pkgs[@]}"
du -sh .gpu
