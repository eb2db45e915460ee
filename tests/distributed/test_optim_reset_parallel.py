"""ProRL's optimizer reset and exact resume under TP=2, PP=2 and DP=2 (distributed optimizer).

Each case is one ``torchrun --nproc_per_node 2`` (gloo) of tests/distributed/scripts/optim_reset_parallel.py:

* reset: after ``reset_reference`` + ``reset_optimizer`` the KL to the reference is exactly 0, and the
  next update equals that of a freshly built policy (brand-new optimizer) loaded with the same weights,
  bit for bit;
* resume: save at step 2, and a new policy that loads the checkpoint repeats the uninterrupted run's
  next two steps bit for bit.

``fused`` runs megatron with Transformer Engine ``FusedAdam``'s state layout (per-group step counter),
what megatron-core builds on every GPU job, through the CPU emulation in
:mod:`nemo_prorl.policy.megatron.fused_adam_emulation`. tests/distributed/test_engine_parallel.py covers
parity of the layouts with one process; this file adds the reset and resume checks it does not have.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

SCRIPT = Path(__file__).parent / "scripts" / "optim_reset_parallel.py"


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

    return make_tiny_hf_model(tmp_path_factory.mktemp("optim_reset") / "hf", "qwen2", seed=3)


@pytest.mark.parametrize(
    "check,layout,adam",
    [
        ("reset", "tp", "torch"),
        ("reset", "pp", "torch"),
        ("reset", "dp", "torch"),
        ("reset", "dp", "fused"),
        ("resume", "dp", "torch"),
        ("resume", "dp", "fused"),
    ],
)
def test_optimizer_reset_and_resume_under_parallelism(hf, tmp_path, check, layout, adam):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(SCRIPT)]
    cmd += ["--check", check, "--layout", layout, "--adam", adam, "--hf", str(hf), "--work", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{check} {layout} {adam} failed (rc={proc.returncode}):\n{out[-6000:]}"
    assert proc.stdout.count(f"OPTIM_OK {check} {layout} {adam} ") == 2, proc.stdout
