#!/usr/bin/env bash
# Idempotent set-up of `.venv-bench/`: a separate virtual environment holding the PEER frameworks at
# pinned versions, used only by the CPU benchmark suite (benchmarks/). It is kept apart from `.venv/`
# so that a peer's pins never move the project's own dependencies.
#
# What it does (and why):
#   1. torch==2.13.0 first -- the same CPU build as `.venv/`, so pip takes the local CPU wheel and the
#      peers below do not resolve a CUDA build.
#   2. the peers at pinned versions (trl and the versions of its stack that the peer measurements in
#      the research notes were taken with).
#   3. this package, editable, so the benchmark scripts can import both ours and the peer in one
#      interpreter when a side-by-side check needs it.
#
# Usage: benchmarks/setup_peers.sh     (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv-bench
PEERS=("trl==1.16.0" "transformers==5.23.0" "accelerate==1.15.0" "datasets==5.2.0" "tokenizers==0.23.3")
want="torch==2.13.0;${PEERS[*]};$(sha256sum setup.py | cut -d' ' -f1)"
stamp=$VENV/.peers_installed
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup_peers: $VENV is up to date"
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY=$VENV/bin/python
"$VPY" -m pip install -q --upgrade pip
"$VPY" -c "import torch" 2>/dev/null || "$VPY" -m pip install -q "torch==2.13.0"
"$VPY" -m pip install -q "${PEERS[@]}"
"$VPY" -m pip install -q -e .
"$VPY" - <<'PY'
import torch
import trl
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert trl.__version__ == "1.16.0", trl.__version__
print(f"setup_peers: torch {torch.__version__}, trl {trl.__version__}")
PY
echo "$want" > "$stamp"
