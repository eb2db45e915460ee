"""Token-budget micro-batches at PP=2 (variable pipeline shapes, full recompute) and DP=2 (unequal
micro-batch counts, selective recompute), padded (binned) and packed (``policy.sequence_packing=on``,
also at TP=2).

Both must equal the single-process engine with fixed 2-row micro-batches: log-probs, loss, grad norm and
the updated weights. The worker is tests/distributed/scripts/token_budget_parallel.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from worker_launch import run_worker

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # ~35 s per layout on 2 cores

SCRIPT = Path(__file__).parent / "scripts" / "token_budget_parallel.py"


def _run(mode: str, hf: Path, work: Path, nproc: int, timeout: int = 300) -> str:
    return run_worker(SCRIPT, mode, hf, work, nproc, timeout)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

    root = tmp_path_factory.mktemp("token_budget")
    hf = make_tiny_hf_model(root / "hf", "qwen2", seed=4)
    assert "BUDGET_REF_WRITTEN" in _run("ref", hf, root, 1)
    return hf, root


@pytest.mark.parametrize("mode", ["pp", "dp", "pp_packed", "dp_packed", "tp_packed"])
def test_token_budget_under_pp_and_dp_matches_the_fixed_count_engine(work, mode):
    hf, root = work
    out = _run(mode, hf, root, 2)
    assert out.count(f"BUDGET_OK {mode} ") == 2, out
