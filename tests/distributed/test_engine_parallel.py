"""MegatronPolicy at TP=2, PP=2 and DP=2 (distributed optimizer) equals the single-process engine.

The reference run (1 process, TP=PP=DP=1, the whole batch) writes its log-probs, step metrics and
exported weights; each torchrun (2 gloo ranks) recomputes them and asserts agreement; the TP=2 run
also writes a checkpoint that a TP=1 process then loads (weights + resharded optimizer state) and
continues from. The worker is tests/distributed/scripts/engine_parallel.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from worker_launch import run_worker

pytestmark = pytest.mark.distributed

SCRIPT = Path(__file__).parent / "scripts" / "engine_parallel.py"


def _run(mode: str, hf: Path, work: Path, nproc: int, timeout: int = 300) -> str:
    return run_worker(SCRIPT, mode, hf, work, nproc, timeout)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

    root = tmp_path_factory.mktemp("engine_parallel")
    hf = make_tiny_hf_model(root / "hf", "qwen2", seed=3)
    out = _run("ref", hf, root, 1)
    assert "ENGINE_REF_WRITTEN" in out
    return hf, root


@pytest.mark.parametrize("mode", ["tp", "pp", "dp"])
def test_parallel_layout_matches_single_process(work, mode):
    hf, root = work
    out = _run(mode, hf, root, 2)
    assert out.count(f"ENGINE_OK {mode} ") == 2, out
    print("\n".join(line for line in out.splitlines() if line.startswith("ENGINE_OK")))


def test_checkpoint_saved_at_tp2_loads_at_tp1(work):
    hf, root = work
    if not (root / "ckpt_tp2" / "COMPLETE").exists():
        _run("tp", hf, root, 2)
    out = _run("ckpt_tp1", hf, root, 1)
    assert "ENGINE_OK ckpt_tp1 " in out, out
