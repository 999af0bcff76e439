#!/usr/bin/env bash
# Download, here, the wheels that the lent GPU machine's image lacks (it holds torch, onnx, onnxruntime, rich,
# pyyaml, matplotlib and scikit-learn, and reaches no package registry) into .whl/, which travels with a device run
# when the run names it in `carry` (.gitignore lists it). Python 3.12, x86-64, as on that image (../.library/device/KINDS.md).
# PostgreSQL/MySQL drivers and the dashboard are left out: the GPU check uses SQLite.
#   scripts/gpu_wheels.sh && du -sh .whl
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl optuna==5.1.0 alembic==1.20.1 sqlalchemy==2.1.9 mako==1.4.3 colorlog==6.12.0 ptflops==0.7.5 \
  torch-pruning==1.6.1 greenlet
ls .whl
