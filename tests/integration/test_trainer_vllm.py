"""The whole trainer with colocated vLLM: ``torchrun ... -m nemo_prorl.cli train`` in .venv-vllm, 2 ranks.

Both ranks host a Megatron TP=2 shard of the demo policy and a vLLM shard (``external_launcher``):
rollout TP=1 (two vLLM data-parallel replicas, prompts sharded over them) and rollout TP=2 (one replica
spread over both ranks). Two training steps, validation at the start and after step 2 (the evaluate path
through the driver), weights synced in place after each step. ``token_mult_prob_error`` compares the
engine's sampling log-probs with the policy's recomputation: it stays at 1 only if every synced tensor
(the tied lm_head included) reached vLLM.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VLLM_TORCHRUN = REPO / ".venv-vllm" / "bin" / "torchrun"
RUNS_IN_VLLM_VENV = True  # see tests/conftest.py

#: float32 on both sides: the engine/policy log-prob mismatch is numerics only
TOKEN_MULT_TOL = 1e-3

OVERRIDES = [
    "trainer.max_steps=2", "trainer.prompts_per_step=4", "trainer.mini_batch_prompts=2", "rollout.n=4",
    "trainer.val_interval=2", "trainer.val_max_prompts=3", "trainer.val_n=2", "final_eval.enabled=false",
    "checkpoint.interval=0", "trainer.progress_bar=false", "logging.plots=false", "reset.at_steps=[]",
    "reset.on_val_plateau=false", "rollout.backend=vllm", "rollout.enforce_eager=true",
    "rollout.dtype=float32", "rollout.enable_sleep_mode=true", "policy.tensor_model_parallel_size=2",
]


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("rollout_tp", [1, 2])
def test_trainer_with_colocated_vllm(tmp_path, rollout_tp):
    if not VLLM_TORCHRUN.exists():
        pytest.skip(".venv-vllm absent (run scripts/setup_vllm_cpu.sh)")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1",
               TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    run = tmp_path / "run"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(VLLM_TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "nemo_prorl.cli", "train",
         *OVERRIDES, f"rollout.tensor_parallel_size={rollout_tp}", f"run_dir={run}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, (
        f"rollout TP={rollout_tp} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}"
    )
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "event" not in r and "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert math.isfinite(r["loss"]) and math.isfinite(r["kl"]), r
        assert abs(r["token_mult_prob_error"] - 1.0) < TOKEN_MULT_TOL, r
        assert r["response_length/mean"] > 0
    # validation ran at step 0 and after step 2 through the driver (every rank's engine)
    val = [r for r in records if "val/reward/mean" in r]
    assert [r["step"] for r in val] == [0, 2]
    assert (run / "hf" / "model.safetensors").is_file()
    print(f"colocated vLLM trainer, rollout TP={rollout_tp}: {wall:.1f}s; token_mult_prob_error "
          f"{[r['token_mult_prob_error'] for r in steps]}; loss {[r['loss'] for r in steps]}")
