#!/usr/bin/env bash
# The CUDA check on a GPU machine, from a fresh checkout: install, then benchmarks/gpu_check.py
# (CUDA tests, strong/boss with and without AMP, train_bench on CUDA, torchrun over NCCL, GPU
# embed/identify, checkpoints across devices), into one JSON file.
#
#   bash benchmarks/gpu_check.sh [RESULT.json] [gpu_check.py options...]
#
# Install: the README's command (a fresh .venv, `pip install -e ".[train,test]"`). On a machine
# with no package registry, set VOXAUG_WHEELS=DIR: the project is then installed into the
# python3 that already holds torch, its other requirements taken from the wheels in DIR only.
set -euo pipefail
cd "$(dirname "$0")/.."
result=${1:-gpu_check.json}
shift || true
if [ -n "${VOXAUG_WHEELS:-}" ]; then
    python=python3
    $python -m pip install -q --no-index --find-links "$VOXAUG_WHEELS" --no-build-isolation -e ".[train,test]"
else
    python3 -m venv .venv && .venv/bin/pip install -q -e ".[train,test]"
    python=.venv/bin/python
fi
export PATH="$(cd "$(dirname "$(command -v $python)")" && pwd):$PATH" PYTHONUNBUFFERED=1
exec $python benchmarks/gpu_check.py --json "$result" "$@"
