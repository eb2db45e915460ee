"""The reset to the best policy (``load_policy_weights``) at TP=2 and PP=2 on 2 gloo ranks, bit for bit.

The worker is tests/distributed/scripts/best_reset_parallel.py. It emulates the GPU path's layouts only:
megatron-core's ``dist_checkpointing.load`` reads the same ``ShardedTensor`` s on NCCL as on gloo
(megatron/core/dist_checkpointing/serialization.py ``load``), and the weights are compared after the
same TP/PP gather the rollout sync uses (nemo_prorl.policy.megatron.convert.export_hf_state_dict).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from worker_launch import run_worker

pytestmark = pytest.mark.distributed

SCRIPT = Path(__file__).parent / "scripts" / "best_reset_parallel.py"


def _run(mode: str, hf: Path, work: Path, nproc: int, timeout: int = 300) -> str:
    return run_worker(SCRIPT, mode, hf, work, nproc, timeout)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from nemo_prorl.policy.megatron.testing import make_tiny_hf_model

    root = tmp_path_factory.mktemp("best_reset_parallel")
    hf = make_tiny_hf_model(root / "hf", "qwen2", seed=3)
    assert "BEST_OK tp1 rank=0" in _run("tp1", hf, root, 1)
    return hf, root


@pytest.mark.parametrize("mode", ["tp", "pp"])
def test_best_checkpoint_loads_into_reference_and_policy_bit_for_bit(work, mode):
    hf, root = work
    out = _run(mode, hf, root, 2)
    assert out.count(f"BEST_OK {mode} ") == 2, out
