"""The ProRL v2 ingredients switched on in the embedded default run (demo model, hf engine, CPU).

REINFORCE++-baseline advantages, ICE-POP truncated importance sampling against the hf engine's
log-probs, and the scheduled cosine length penalty, run 4 steps uninterrupted and 2 + 2 with a resume
in between: every logged number must be identical (the schedule's position comes from the restored
global step), the mismatch metrics must show that the engine's log-probs are those the trainer
recomputes (same temperature and response mask; ``nemo_prorl/rollout/sampling.py``: processed
log-probs ``log_softmax(logits / T)``), and the length-penalty weight must follow its cosine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nemo_prorl.cli import main as cli_main

TINY = ["trainer.prompts_per_step=4", "trainer.mini_batch_prompts=2", "rollout.n=4",
        "trainer.val_interval=0", "final_eval.enabled=false", "checkpoint.interval=0",
        "trainer.progress_bar=false", "logging.plots=false", "reset.at_steps=[]",
        "reset.on_val_plateau=false", "rollout.temperature=1.2"]
V2 = ["algorithm.advantage.estimator=reinforce_pp_baseline",
      "algorithm.loss.tis=icepop", "algorithm.loss.tis_min=0.5", "algorithm.loss.tis_max=5.0",
      "algorithm.reward_shaping.length_penalty_coef=0.4",
      "phases=[{name: a, steps: 4}]"]


def _steps(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "event" not in r]


def _train(run_dir: Path, *overrides: str) -> int:
    return cli_main(["train", *TINY, *V2, f"run_dir={run_dir}", *overrides])


@pytest.mark.slow
def test_v2_ingredients_train_and_resume_exactly(tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    assert _train(full, "trainer.max_steps=4") == 0
    assert _train(split, "trainer.max_steps=2") == 0
    assert _train(split, "trainer.max_steps=4") == 0
    a, b = _steps(full), _steps(split)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        ra = {k: v for k, v in ra.items() if not k.startswith(("time/", "tokens_per_s"))}
        rb = {k: v for k, v in rb.items() if not k.startswith(("time/", "tokens_per_s"))}
        assert ra == rb, f"step {ra['step']} differs after resume"
    # w(s) = 0.4 * (1 + cos(pi * s / 4)) / 2 at the 0-based step s of the 4-step phase
    for r in a:
        s = r["step"] - 1
        assert r["reward/length_penalty_coef"] == pytest.approx(0.2 * (1 + math.cos(math.pi * s / 4)))
    # the hf engine's log-probs agree with the trainer's: no token dropped by ICE-POP, tiny gen-KL
    for r in a:
        assert r["is_oob_ratio"] == 0.0
        assert 0.0 <= r["gen_kl_error"] < 1e-4
        assert abs(r["sampling_importance_ratio"] - 1.0) < 1e-2
        assert 1.0 <= r["token_mult_prob_error"] < 1.01
