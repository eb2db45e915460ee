"""Every package collective of a real training run, at DP=2, TP=2 and PP=2, on an emulated NCCL group.

Two gloo ranks under torchrun run the real ``ProRLTrainer`` (embedded default, tiny settings: rollouts,
log-probs, updates, weight sync, the preemption flag, the final checkpoint and HF export) with
``tests/unit/fake_nccl.py`` installed: ``torch.distributed.get_backend`` reports ``nccl`` for every group
not created as gloo, a CPU tensor reaching a collective issued by package code raises NCCL's ``No
backend type associated with device type cpu`` (``c10d::ProcessGroup::getBackend``,
``torch/csrc/distributed/c10d/ProcessGroup.cpp``), object collectives stage their pickles where torch's
``_get_object_coll_device`` puts them for NCCL, and torch's lazy device stands in for the current GPU.
A run that finishes therefore sent no host tensor over "NCCL"; the test also checks that each layout's
call sites were reached (so a site that silently stopped communicating would be noticed). Before the
helper existed, the DP layout failed at the first step in the trainer's DP gather of the CPU log-probs
(now ``MegatronPolicy.gather_data_parallel``).
megatron-core's own collectives are recorded but out of scope.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).parent / "scripts" / "trainer_ranks.py"

TINY = ["trainer.max_steps=1", "trainer.prompts_per_step=4", "trainer.mini_batch_prompts=2", "rollout.n=4",
        "trainer.val_interval=0", "final_eval.enabled=false", "checkpoint.interval=0",
        "trainer.progress_bar=false", "logging.plots=false", "reset.at_steps=[]",
        "reset.on_val_plateau=false"]

#: call sites every layout reaches ("module:qualname" of the helper's caller)
COMMON = {"nemo_prorl.trainer.batch_broadcast:broadcast_rollout_batch",
          "nemo_prorl.launch.preemption:PreemptionHandler.requested_on_any_rank",
          "nemo_prorl.policy.megatron.engine:MegatronPolicy._all_finite",
          "nemo_prorl.policy.megatron.checkpoint:_agree",
          "nemo_prorl.policy.megatron.checkpoint:_broadcast_str",
          "nemo_prorl.policy.megatron.checkpoint:_barrier"}
LAYOUTS = {
    "dp": ([], {"nemo_prorl.policy.megatron.engine:MegatronPolicy.gather_data_parallel",
                "nemo_prorl.policy.megatron.engine:MegatronPolicy._dp_sum",
                "nemo_prorl.policy.megatron.engine:MegatronPolicy._reduce_metrics"}),
    "tp": (["policy.tensor_model_parallel_size=2"],
           {"nemo_prorl.policy.megatron.convert:_gather_tp",
            "nemo_prorl.algorithms.logprobs:_ChunkedLogprobs.forward",
            "nemo_prorl.algorithms.logprobs:_VocabParallelFusedLoss.forward"}),  # policy.lm_head: fused
    "pp": (["policy.pipeline_model_parallel_size=2"],
           {"nemo_prorl.policy.megatron.engine:MegatronPolicy._broadcast_from_last_stage",
            "nemo_prorl.policy.megatron.engine:MegatronPolicy._broadcast_object_from_last_stage",
            "nemo_prorl.policy.megatron.convert:export_hf_state_dict"}),
}


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_training_run_sends_no_host_tensor_over_nccl(tmp_path, layout):
    overrides, expected = LAYOUTS[layout]
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2", str(SCRIPT),
         str(tmp_path / "out"), "--fake-nccl", *TINY, *overrides, f"run_dir={tmp_path / 'run'}"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rep in ranks:
        assert rep["steps"] == 1 and math.isfinite(rep["train"][0]["loss"])
        missing = (COMMON | expected) - set(rep["sites"])
        assert not missing, f"rank {rep['rank']}: call sites not reached: {sorted(missing)}"
        assert all(site.startswith("nemo_prorl.") for site in rep["sites"])
    assert ranks[0]["digest"] == ranks[1]["digest"]  # both ranks export the same full weights
    if layout == "dp":
        assert [r["dp"] for r in ranks] == [[0, 2], [1, 2]]
        assert ranks[0]["train"] == ranks[1]["train"]
