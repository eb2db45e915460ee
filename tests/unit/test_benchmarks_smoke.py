"""Smoke test of the CPU benchmark suite: each script runs at a tiny ``--quick`` setting and writes JSON.

Only our variants and the in-process baselines run here (the peer variants need ``.venv-bench`` and
run in ``scripts/bench_cpu.sh``); the scripts themselves check that the variants agree numerically.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, out: Path, *extra: str, timeout: int = 120) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(REPO / "benchmarks" / script), "--quick", "--out", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO), timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_lmhead_quick(tmp_path):
    res = _run("bench_lmhead.py", tmp_path / "lm.json", "--variants", "naive,ours_fused", "--threads", "1")
    assert set(res["variants"]) == {"naive", "ours_fused"}
    assert res["variants"]["ours_fused"]["tokens_per_s"]["median"] > 0
    assert res["max_rel_diff_vs_naive"]["ours_fused"] < 1e-4  # same loss and weight gradient
    assert "ours_fused_vs_naive_speed" in res["ratios"]


def test_code_reward_quick(tmp_path):
    from nemo_prorl.rewards.sandbox import SandboxUnavailableError, make_sandbox

    try:
        make_sandbox(backend="bwrap")
    except SandboxUnavailableError as exc:
        pytest.skip(f"no bwrap sandbox here: {exc}")
    res = _run("bench_code_reward.py", tmp_path / "code.json", "--variants", "ours_score,baseline")
    assert res["scores_agree"] == {"ours_score": True, "baseline": True}
    assert 0.0 < res["mean_score"] < 1.0  # the corpus mixes correct and buggy programs
    assert res["variants"]["ours_score"]["cases_per_s"]["median"] > 0


def test_grpo_step_quick(tmp_path):
    res = _run("bench_grpo_step.py", tmp_path / "grpo.json", "--variants", "ours,ours_recompute",
               "--steps", "2", timeout=300)  # two processes (~20 s each on quiet cores)
    ours = res["variants"]["ours"]
    assert ours["step_s"]["median"] > 0
    assert set(ours["stages_s"]) == {"generate_s", "reward_s", "logprobs_s", "train_s", "sync_s"}
    assert 1 <= ours["mean_completion_tokens"]["median"] <= 32
    assert ours["extra"]["old_logprobs_reused"] is True
    assert res["variants"]["ours_recompute"]["extra"]["old_logprobs_reused"] is False
    assert res["ratios"] == {}  # no TRL in this run: no ratio to it (never one taken from another run)


def test_grpo_step_compiled_decode_quick(tmp_path):
    """``ours_compiled``: our engine decodes through torch.compile; the compile lands in the first step."""
    res = _run("bench_grpo_step.py", tmp_path / "comp.json", "--variants", "ours_compiled", "--steps", "2",
               timeout=400)
    ours = res["variants"]["ours_compiled"]
    assert ours["extra"]["compile_decode"] is True
    assert ours["first_step_s"]["median"] > ours["step_s"]["median"]  # the first step compiled
    assert 1 <= ours["mean_completion_tokens"]["median"] <= 32


def test_grpo_step_long_tail_mid_model_quick(tmp_path):
    """The matmul-bound model size runs the trainer's path on long-tailed lengths and records padding."""
    res = _run("bench_grpo_step.py", tmp_path / "mid.json", "--variants", "ours", "--lengths", "long-tail",
               "--model", "mid", "--steps", "2", timeout=300)
    assert res["settings"]["model"] == "mid" and res["settings"]["hidden_size"] == 512
    ours = res["variants"]["ours"]
    assert 1 <= ours["mean_completion_tokens"]["median"] <= 256
    assert 0.0 <= ours["padding_fraction"]["median"] < 1.0


def test_ratios_are_like_for_like():
    """Hand values: only serial/serial and 2-way/2-way for the code reward; TRL ratios only within a run."""
    import importlib

    sys.path.insert(0, str(REPO))
    code = importlib.import_module("benchmarks.bench_code_reward")
    grpo = importlib.import_module("benchmarks.bench_grpo_step")
    med = {"ours_score": 74.0, "ours_pool": 89.0, "baseline": 43.0, "baseline_2": 68.0}
    assert code.like_for_like_ratios(med) == {"serial_ours_vs_baseline": 74.0 / 43.0,
                                              "two_in_flight_ours_vs_baseline": 89.0 / 68.0}
    assert code.like_for_like_ratios({"ours_pool": 89.0, "baseline": 43.0}) == {}  # 2 workers vs 1: none
    assert grpo.like_for_like_ratios({"ours": 0.05, "ours_recompute": 0.06, "trl": 0.1}) == {
        "ours_speedup_vs_trl": 0.1 / 0.05, "ours_recompute_speedup_vs_trl": 0.1 / 0.06}
    assert grpo.like_for_like_ratios({"ours_recompute": 0.06}) == {}
    assert grpo.like_for_like_ratios({"ours": 0.05, "ours_padded": 0.08}) == {
        "ours_speedup_vs_ours_padded": 0.08 / 0.05}


def test_packing_quick(tmp_path):
    res = _run("bench_packing.py", tmp_path / "packing.json")
    assert res["padding_fraction"]["packed"] == 0.0 < res["padding_fraction"]["binned"]
    assert res["layout"]["packed"]["positions"] == res["layout"]["real_positions"]
    assert res["agree"]["max_abs_logprob_diff"] <= 1e-4  # the script fails otherwise
    assert res["seconds"]["packed"]["train_step"]["median"] > 0
