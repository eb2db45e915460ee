"""The trainer's rollout drivers on 2 gloo ranks under torchrun (no vLLM needed).

* ``test_colocated_driver_protocol``: :class:`ColocatedDriver` over real tiny hf engines, one per rank,
  laid out as 2 data-parallel replicas and as 1 replica spread over both ranks (the rollout-TP case):
  leader/follower sessions, prompt sharding and gathering, a replica with an empty shard (it skips
  generation: replicas are independent),
  skipped prompts, sleep outside sessions, ``generate_collective(to_all=True)``, and an abort on rank 0
  releasing the follower.
* ``test_hf_trainer_two_ranks_tp2``: the hf backend (:class:`RankZeroDriver`) drives a 2-step demo run
  with Megatron TP=2 on 2 ranks; every step's rollout metrics equal the single-process run's, its loss,
  KL and entropy to 1e-5.
* ``test_trainer_dp2_ranks_agree``: the trainer itself at DP=2 (TP=PP=1 on 2 ranks: log-probs of each
  rank's shard all-gathered, gradients averaged): both ranks return the same metrics every step and hold
  bit-identical weights afterwards, and every step's rollouts and loss equal the single-process run's.

Script half: ``torchrun --nproc_per_node 2 tests/integration/test_trainer_distributed.py OUT_DIR``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _driver_checks(out_dir: Path, fake_nccl: bool = False) -> None:  # noqa: C901 - one linear script
    import contextlib

    import torch.distributed as dist

    sys.path.insert(0, str(REPO / "tests" / "unit"))
    from fake_nccl import FakeNccl

    from nemo_prorl.rollout import HFRolloutEngine, SamplingParams
    from nemo_prorl.rollout.sampling import sample_seed
    from nemo_prorl.rollout.tiny import build_tiny_model, build_tiny_tokenizer
    from nemo_prorl.trainer.rollout_driver import ColocatedDriver, RankZeroDriver, RolloutAbortedError

    emulation = FakeNccl()
    stack = contextlib.ExitStack()
    if fake_nccl:  # the default group behaves as NCCL (see tests/unit/fake_nccl.py)
        stack.enter_context(emulation.installed())
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    tok = build_tiny_tokenizer()
    prompts = [tok.encode(t) for t in ("1 + 2 =", "def f(x):", "Let x = 5.", "a b c")]
    sp = SamplingParams(temperature=1.0, max_tokens=6, seed=11)
    report: dict = {}

    def engine() -> HFRolloutEngine:  # same seed -> same weights on both ranks
        model = build_tiny_model(tok, seed=0)
        return HFRolloutEngine(model, tok, max_prompt_tokens=16, max_response_tokens=6,
                               overlong_prompt="skip")

    def tokens(out):
        return [(s.prompt_index, s.token_ids) for s in out.samples]

    # --- 2 replicas (rollout TP=1): shards [0, 2) on rank 0 and [2, 4) on rank 1
    eng = engine()
    eng.dp_rank, eng.dp_size = rank, 2  # what vLLM reports for this layout
    drv = ColocatedDriver(eng, sleep_between=True)
    assert drv.tp_size == 1

    def leader():
        out = drv.generate(prompts, 2, sp)
        # the same shards generated here, with the per-shard seeds the driver documents
        ref = []
        for start, stop in ((0, 2), (2, 4)):
            local = dataclasses.replace(sp, seed=sample_seed(sp.seed, start, -1))
            shard = eng.generate(prompts[start:stop], 2, local)
            ref += [(start + s.prompt_index, s.token_ids) for s in shard.samples]
        assert tokens(out) == ref, (tokens(out), ref)
        assert all(s.prompt_token_ids == prompts[s.prompt_index] for s in out.samples)
        one = drv.generate(prompts[:1], 3, sp)  # replica 1 has nothing: it generates nothing
        assert [s.prompt_index for s in one.samples] == [0, 0, 0]
        over = list(range(3, 3 + 17))
        skip = drv.generate([prompts[0], over, prompts[1]], 1, sp)
        assert skip.skipped_prompts == [1] and [s.prompt_index for s in skip.samples] == [0, 2]
        return {"samples": len(out.samples), "replicas": out.timings["replicas"]}

    res = drv.on_rank0(leader, default="follower")
    report["dp2"] = res
    try:
        eng.generate(prompts[:1], 1, sp)
        raise AssertionError("engine generated outside a session")
    except RuntimeError as err:
        assert "asleep" in str(err)
    everywhere = drv.generate_collective(prompts[:3], 2, sp, to_all=True)
    assert [s.prompt_index for s in everywhere.samples] == [0, 0, 1, 1, 2, 2]
    report["collective"] = tokens(everywhere)

    def failing():
        drv.generate(prompts[:2], 1, sp)
        raise ValueError("boom on the leader")

    try:
        drv.on_rank0(failing)
        raise AssertionError("the session did not fail")
    except (ValueError, RolloutAbortedError) as err:
        assert "boom on the leader" in str(err)
        report["abort"] = type(err).__name__
    assert drv.on_rank0(lambda: "again", default="follower") == ("again" if rank == 0 else "follower")

    # --- 1 replica over both ranks (rollout TP=2): both ranks generate the same prompts, same seeds
    eng1 = engine()
    drv1 = ColocatedDriver(eng1, sleep_between=False)
    assert (drv1.dp_size, drv1.tp_size) == (1, 2)
    whole = drv1.generate_collective(prompts, 2, sp, to_all=True)
    assert tokens(whole) == tokens(eng1.generate(prompts, 2, sp))
    report["tp2_equal_plain_engine"] = True

    # --- the hf layout: rank 0's engine, its output broadcast over the default group
    rz = RankZeroDriver(eng1 if rank == 0 else None)
    report["rank_zero_to_all"] = tokens(rz.generate_collective(prompts[:2], 2, sp, to_all=True))

    report["driver_calls"] = sorted({(c.site, c.op, c.nccl, tuple(c.devices)) for c in emulation.calls
                                     if c.site.startswith("nemo_prorl.")})
    (out_dir / f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()
    stack.close()


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


@pytest.mark.distributed
@pytest.mark.parametrize("backend", ["gloo", "fake-nccl"])
def test_colocated_driver_protocol(tmp_path, backend):
    """With ``fake-nccl`` the default group behaves as NCCL (tests/unit/fake_nccl.py): the colocated
    driver must keep its control messages and samples on its own gloo group, on the host, and the hf
    driver's broadcast over the default group must stage its pickle on the GPU."""
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(Path(__file__).resolve()),
         str(tmp_path), *(["--fake-nccl"] if backend == "fake-nccl" else [])],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["dp2"] == {"samples": 8, "replicas": 2.0} and r1["dp2"] == "follower"
    assert r0["collective"] == r1["collective"]  # to_all: every rank holds every sample
    assert {r0["abort"], r1["abort"]} == {"ValueError", "RolloutAbortedError"}
    assert r0["tp2_equal_plain_engine"] and r1["tp2_equal_plain_engine"]
    assert r0["rank_zero_to_all"] == r1["rank_zero_to_all"] and len(r0["rank_zero_to_all"]) == 4
    if backend == "fake-nccl":
        for rep in (r0, r1):
            calls = [tuple(c) for c in rep["driver_calls"]]
            colocated = [c for c in calls if c[0].startswith("nemo_prorl.trainer.rollout_driver:Colocated")]
            assert colocated and all(not nccl and set(devs) == {"cpu"} for _, _, nccl, devs in colocated)
            rank_zero = [c for c in calls if c[0].endswith("RankZeroDriver.generate_collective")]
            assert rank_zero and all(nccl and set(devs) == {"lazy:0"} for _, _, nccl, devs in rank_zero)


TINY = ["trainer.max_steps=2", "trainer.prompts_per_step=4", "trainer.mini_batch_prompts=2", "rollout.n=4",
        "trainer.val_interval=0", "final_eval.enabled=false", "checkpoint.interval=0",
        "trainer.progress_bar=false", "logging.plots=false", "reset.at_steps=[]",
        "reset.on_val_plateau=false"]


#: metrics fixed by the rollouts alone (they exist in every step's record)
ROLLOUT_KEYS = ("reward/mean", "reward/generated_mean", "response_length/mean", "dynamic_sampling/rounds",
                "dynamic_sampling/groups_kept")


def _steps(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "event" not in r and "loss" in r]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    """The same 2-step run in one process (the reference both layouts are compared with)."""
    run = tmp_path_factory.mktemp("single") / "run"
    proc = subprocess.run(
        [str(BIN / "python"), "-m", "nemo_prorl.cli", "train", *TINY, f"run_dir={run}"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return run


@pytest.mark.distributed
@pytest.mark.slow
def test_hf_trainer_two_ranks_tp2(tmp_path, single_run):
    env = _env()
    t0 = time.perf_counter()
    dist_run = tmp_path / "tp2"
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "nemo_prorl.cli", "train",
         *TINY, "policy.tensor_model_parallel_size=2", f"run_dir={dist_run}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    t_dist = time.perf_counter() - t0
    a, b = _steps(dist_run), _steps(single_run)
    assert [r["step"] for r in a] == [1, 2]
    for r in a:
        assert math.isfinite(r["loss"]) and abs(r["token_mult_prob_error"] - 1.0) < 1e-3, r
    # every step: the same rollouts (rank 0's engine, same seeds; step 1 from the same initial weights,
    # step 2 from weights that differ only by the order of TP reductions, far below what moves a sampled
    # token here) and, up to that order, the same loss, KL and entropy
    assert [r["step"] for r in b] == [1, 2]
    for step, (x, y) in enumerate(zip(a, b), 1):
        for key in ROLLOUT_KEYS:
            assert key in x and key in y, (step, key, sorted(y))
            assert x[key] == y[key], (step, key, x[key], y[key])
        for key in ("loss", "kl", "entropy"):
            assert x[key] == pytest.approx(y[key], abs=1e-5), (step, key)
    worst = max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b))
    print(f"hf trainer TP=2 on 2 ranks: {t_dist:.1f}s; loss {[r['loss'] for r in a]} vs single "
          f"{[r['loss'] for r in b]}; max |loss diff| {worst:.2e}")


@pytest.mark.distributed
@pytest.mark.slow
def test_trainer_dp2_ranks_agree(tmp_path, single_run):
    script = REPO / "tests" / "distributed" / "scripts" / "trainer_ranks.py"
    out, run = tmp_path / "out", tmp_path / "dp2"
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(script), str(out), *TINY,
         f"run_dir={run}"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["dp"], r1["dp"]) == ([0, 2], [1, 2])  # TP=PP=1 on 2 ranks: data parallel
    assert r0["steps"] == r1["steps"] == 2 and len(r0["train"]) == 2
    # metrics are reduced over the DP group: every rank returns the same numbers, exactly
    assert r0["train"] == r1["train"]
    assert r0["train"][0]["loss"] != r0["train"][1]["loss"]  # the compared values are not constant
    assert r0["digest"] == r1["digest"]  # averaged gradients: bit-identical weights on both ranks
    logged = _steps(run)
    assert [r["step"] for r in logged] == [1, 2]
    assert [r["loss"] for r in logged] == [m["loss"] for m in r0["train"]]
    # every step: the same rollouts (rank 0 generates with the same seeds; step 1 from the same initial
    # weights, step 2 from weights that differ by the order of reductions only); each rank trains on half
    # of every mini-batch with the global token count, so the loss is the single-process loss up to the
    # order of the reductions
    ref = _steps(single_run)
    for step, (x, y) in enumerate(zip(logged, ref, strict=True), 1):
        for key in ROLLOUT_KEYS:
            assert key in x and key in y, (step, key, sorted(y))
            assert x[key] == y[key], (step, key, x[key], y[key])
        for key in ("loss", "kl"):
            assert x[key] == pytest.approx(y[key], abs=1e-6), (step, key)


if __name__ == "__main__":
    _driver_checks(Path(sys.argv[1]), fake_nccl="--fake-nccl" in sys.argv[2:])
