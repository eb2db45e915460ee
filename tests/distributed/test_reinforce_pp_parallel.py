"""REINFORCE++-baseline's global statistics at DP=2 equal DP=1 with the doubled batch.

Two gloo ranks under torchrun each hold half of the batch and reduce the token-weighted sums through
``nemo_prorl.collectives.all_reduce`` (the worker is tests/distributed/scripts/reinforce_pp_dp.py). On
GPU the same sums go over NCCL; ``collectives.all_reduce`` stages the float64 CPU sums on the current
CUDA device (``tests/distributed/test_collectives_placement.py`` covers that placement).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed]

SCRIPT = Path(__file__).parent / "scripts" / "reinforce_pp_dp.py"


def test_dp2_equals_dp1_with_the_doubled_batch():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(SCRIPT)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert proc.stdout.count("RPP_OK ") == 2, out[-6000:]
