#!/usr/bin/env bash
# Idempotent set-up: creates .venv/ at the repo root and installs nemo_prorl with its test tools.
# Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python

# bubblewrap is the code-reward sandbox; install it when we can (root + apt), else the probe reports it.
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) >/dev/null 2>&1 \
      || echo "setup: could not install bubblewrap; code rewards will refuse to run without a sandbox" >&2
  else
    echo "setup: bubblewrap (bwrap) not found; install it for sandboxed code rewards" >&2
  fi
fi

stamp=.venv/.nemo_prorl_installed
want=$(cat setup.py | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$VPY" -m pip install -q --upgrade pip
  # torch first: the local CPU wheel satisfies torch>=2.6 so nothing pulls a CUDA build.
  "$VPY" -c "import torch" 2>/dev/null || "$VPY" -m pip install -q "torch==2.13.0"
  "$VPY" -m pip install -q -e ".[dev,trl]"  # trl: tests/unit/integrations/test_trl.py runs a real GRPOTrainer
  echo "$want" > "$stamp"
fi
