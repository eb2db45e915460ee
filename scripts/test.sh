#!/usr/bin/env bash
# Set up (idempotent) and run the whole CPU test suite: unit, distributed (torchrun on gloo), integration.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/python -m pytest -q tests "$@"
