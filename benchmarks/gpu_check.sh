#!/usr/bin/env bash
# The CUDA check on a GPU machine, from a fresh checkout: install, then benchmarks/gpu_check.py
# (CUDA tests, strong/boss with and without AMP, train_bench on CUDA, torchrun over NCCL, GPU
# embed/identify, checkpoints across devices), into one JSON file.
#
#   bash benchmarks/gpu_check.sh [RESULT.json] [gpu_check.py options...]
#
# Install: the README's command (a fresh .venv, `pip install -e ".[train,test]"`). On a machine
# with no package registry, set VOXAUG_WHEELS=DIR: the project is then installed into the
# python3 that already holds torch, its other requirements and its build backend (setuptools>=77 and wheel)
# taken from the wheels in DIR only.
set -euo pipefail
case "${1:-}" in
    -h | --help)
        echo "usage: bash benchmarks/gpu_check.sh [RESULT.json] [gpu_check.py options...]"
        echo "Installs voxaug (offline from DIR's wheels with VOXAUG_WHEELS=DIR), then runs benchmarks/gpu_check.py"
        echo "--json RESULT.json (default gpu_check.json); its options: python benchmarks/gpu_check.py --help"
        exit 0 ;;
esac
cd "$(dirname "$0")/.."
result=gpu_check.json
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then  # RESULT.json given (an option starts with "-")
    result=$1
    shift
fi
if [ -n "${VOXAUG_WHEELS:-}" ]; then
    python=python3
    # built as pyproject.toml says, with its backend from DIR: this python's own may be too old (`license = "MIT"`
    # needs setuptools 77; 3.11's venv holds 65.5), and replacing it could break torch's pin on it
    $python -m pip install -q --no-index --find-links "$VOXAUG_WHEELS" -e ".[train,test]"
else
    python3 -m venv .venv && .venv/bin/pip install -q -e ".[train,test]"
    python=.venv/bin/python
fi
export PATH="$(cd "$(dirname "$(command -v $python)")" && pwd):$PATH" PYTHONUNBUFFERED=1
exec $python benchmarks/gpu_check.py --json "$result" "$@"
