#!/usr/bin/env bash
# Installs wst-jax with its test extras into .venv (CPU only) and runs the test suite.
# torch==2.13.0 (the PyTorch reference for parity tests) is the CPU wheel; nothing fetches CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q -n 2 --durations=15 tests "$@"
