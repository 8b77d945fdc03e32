#!/usr/bin/env bash
# The GPU benchmark (benchmarks/gpu.py): step time, images/s and device peak for BN against
# MimicNorm on ResNet18/50 and ShuffleNetV2 at batch 128, and the kernels at N = 20,000.
# Needs the project's environment (`make .venv/.installed`) with a CUDA build of jaxlib:
#   .venv/bin/pip install "jax[cuda12]==$(.venv/bin/python -c 'import jax; print(jax.__version__)')"
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if [ "$($PY -c 'import jax; print(jax.default_backend())')" != gpu ]; then
  echo "gpu.sh: JAX sees no GPU here (install jax[cuda12] into .venv, see the header)" >&2
  exit 2
fi
exec timeout 480 "$PY" benchmarks/gpu.py "$@"
