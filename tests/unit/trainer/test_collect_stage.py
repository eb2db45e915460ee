"""The collect stage (``trainer/collect.py``): grouping, scoring, shaping, dynamic sampling, error policy.

The rewards are the real math reward (``nemo_prorl.rewards.math``), scored in this process; the rollout
engine is a scripted generator (a deterministic table of responses per prompt), so every reward,
shaped reward and metric below is known by hand.
"""

from __future__ import annotations

import json

import pytest

import nemo_prorl.rewards  # noqa: F401  (registers the built-in rewards)
from nemo_prorl.algorithms.dynamic_sampling import DynamicSamplingExhausted
from nemo_prorl.rewards.base import RewardResult, get_reward_class
from nemo_prorl.rewards.pool import is_grader_fault
from nemo_prorl.rollout.base import GenerationOutput, Sample
from nemo_prorl.trainer.collect import (
    collect_rollouts,
    failing_rows,
    group_by_prompt,
    reward_error_streak,
    rollout_metrics,
    sampling_seed,
    score_groups,
    status_rate,
)
from nemo_prorl.trainer.config import ProRLConfig
from nemo_prorl.trainer.errors import TrainingError
from nemo_prorl.trainer.phases import run_settings
from nemo_prorl.trainer.records import Abandoned, RolloutBatch

MATH = get_reward_class("math")()


def _rows(k: int) -> list[dict]:
    return [{"id": f"p{i}", "domain": "math", "prompt": f"{i} + {i} =", "answer": str(2 * i)}
            for i in range(k)]


def _sample(i: int, text: str, *, length: int = 3, finish: str = "stop") -> Sample:
    return Sample(prompt_index=i, prompt_token_ids=[1], token_ids=list(range(5, 5 + length)), text=text,
                  logprobs=None, finish_reason=finish)


class Script:
    """A scripted rollout engine: prompt ``i`` answers right on the samples ``right(i, j)`` says."""

    def __init__(self, right):
        self.right = right
        self.calls: list[tuple[int, int, object]] = []

    def __call__(self, prompts, n, sampling):
        self.calls.append((len(prompts), n, sampling))
        samples = []
        for i, _ in enumerate(prompts):
            for j in range(n):
                ans = f"\\boxed{{{2 * i}}}" if self.right(i, j) else "\\boxed{-1}"  # row i's answer: 2 i
                samples.append(_sample(i, ans))
        return GenerationOutput(samples=samples)


def _score(rows):
    return [MATH.score(r["response"], r) for r in rows]


def _cfg(prompts=2, n=2, **ds) -> ProRLConfig:
    cfg = ProRLConfig()
    cfg.seed, cfg.rollout.seed = 5, None
    cfg.rollout.n = n
    cfg.trainer.prompts_per_step, cfg.trainer.mini_batch_prompts, cfg.trainer.max_steps = prompts, 1, 10
    for k, v in ds.items():
        setattr(cfg.algorithm.dynamic_sampling, k, v)
    return cfg


def test_sampling_seed_formula():
    assert sampling_seed(0, 0, 0) == 0
    assert sampling_seed(3, 2, 1) == 3 * 1_000_003 + 2 * 1009 + 1
    assert sampling_seed(5000, 0, 0) == (5000 * 1_000_003) % (2**31 - 1)


def test_group_by_prompt_keeps_sample_order():
    s = [_sample(1, "a"), _sample(0, "b"), _sample(1, "c")]
    assert [[x.text for x in g] for g in group_by_prompt(3, s)] == [["b"], ["a", "c"], []]


def test_score_groups_raw_and_shaped_rewards_by_hand():
    cfg = _cfg()
    cfg.rewards.failure_score = -0.5
    cfg.algorithm.reward_shaping.stop_properly_penalty_coef = 0.25  # truncated samples keep 1/4
    settings = run_settings(cfg)
    rows = _rows(2)
    by_prompt = [[_sample(0, "x"), _sample(0, "y", finish="length")], [_sample(1, "z")]]
    results = [RewardResult(1.0), RewardResult(1.0), RewardResult(0.0, status="error")]
    groups = score_groups(rows, [[1], [2]], by_prompt, results, settings, failure_score=-0.5, position=(0, 1))
    assert [g.rewards for g in groups] == [[1.0, 1.0], [-0.5]]  # a failed status scores failure_score
    assert [g.shaped for g in groups] == [[1.0, 0.25], [-0.5]]
    assert [g.statuses for g in groups] == [["ok", "ok"], ["error"]]
    assert groups[1].prompt_ids == [2] and groups[0].row["id"] == "p0"


def test_status_rate_and_failing_rows():
    res = [RewardResult(0.0, status="error", info={"why": "bad row"}), RewardResult(1.0),
           RewardResult(0.0, status="timeout"), RewardResult(0.0, status="error")]
    assert status_rate(res, "error") == 0.5 and status_rate([], "error") == 0.0
    rows = json.loads(failing_rows(["a", "b", "c", "d"], res, is_grader_fault))
    assert rows == [["a", "error", {"why": "bad row"}], ["d", "error", {}]]


def test_rollout_metrics_over_every_generated_sample():
    cfg = _cfg()
    res = [RewardResult(1.0), RewardResult(0.0, status="error"), RewardResult(0.0, status="violation"),
           RewardResult(0.5)]

    class Stats:
        def as_metrics(self):
            return {"dynamic_sampling/rounds": 2.0}

    m = rollout_metrics(res, Stats(), run_settings(cfg), (0, 1), generate_s=1.5, score_s=0.25)
    assert m == {"time/generate": 1.5, "time/score": 0.25, "reward/error_rate": 0.25,
                 "reward/timeout_rate": 0.0, "reward/violation_rate": 0.25, "reward/generated_mean": 0.375,
                 "dynamic_sampling/rounds": 2.0}


def test_collect_refills_until_the_batch_has_informative_groups():
    cfg = _cfg(prompts=2, n=2)
    # round 0: prompt 0 all right (no variance), prompt 1 mixed; round 1: both mixed
    rounds = iter([lambda i, j: i == 0 or j == 0, lambda i, j: j == 1])
    gen = Script(lambda i, j: current(i, j))
    current = next(rounds)
    drawn: list[int] = []

    def next_rows(k):
        nonlocal current
        if drawn:
            current = next(rounds)
        drawn.append(k)
        return _rows(k)

    out = collect_rollouts(cfg, 3, run_settings(cfg), next_rows=next_rows, tokenize=lambda r: [7, 8],
                           generate=gen, score=_score, dp_size=1)
    assert isinstance(out, RolloutBatch) and out.failing is None
    assert drawn == [2, 2] and [c[1] for c in gen.calls] == [2, 2]
    assert [c[2].seed for c in gen.calls] == [sampling_seed(5, 3, 0), sampling_seed(5, 3, 1)]
    assert len(out.groups) == 2 and all(len(set(g.rewards)) == 2 for g in out.groups)
    assert out.groups[0].prompt_ids == [7, 8]
    m = out.metrics
    # kept 1 + 2 informative groups; the batch takes the first 2, the third is discarded
    assert m["dynamic_sampling/rounds"] == 2.0 and m["dynamic_sampling/groups_seen"] == 4.0
    assert (m["dynamic_sampling/groups_kept"], m["dynamic_sampling/groups_discarded"]) == (3.0, 1.0)
    assert m["reward/generated_mean"] == pytest.approx(5 / 8)  # 3 + 2 right answers of 8 samples
    assert m["reward/error_rate"] == 0.0


def test_collect_stops_between_rounds_on_a_signal():
    cfg = _cfg(prompts=2, n=2)
    gen = Script(lambda i, j: True)  # no variance: a second round would follow
    out = collect_rollouts(cfg, 0, run_settings(cfg), next_rows=_rows, tokenize=lambda r: [7],
                           generate=gen, score=_score, dp_size=1, stop=lambda: True)
    assert out == Abandoned(rounds=1) and len(gen.calls) == 1  # the flag is not asked before round 0


def test_a_short_batch_is_cut_to_split_over_the_dp_ranks():
    cfg = _cfg(prompts=4, n=2, max_rounds=1, on_exhausted="partial")
    cfg.trainer.mini_batch_prompts = 4
    gen = Script(lambda i, j: i < 3 and j == 0)  # 3 of 4 groups informative
    out = collect_rollouts(cfg, 0, run_settings(cfg), next_rows=_rows, tokenize=lambda r: [7],
                           generate=gen, score=_score, dp_size=4)
    assert len(out.groups) == 2  # 3 groups * 2 = 6 sequences do not split over 4 ranks; 2 * 2 do
    assert out.metrics["dynamic_sampling/partial"] == 1.0


def test_failing_rewards_are_named_when_dynamic_sampling_runs_dry():
    cfg = _cfg(prompts=2, n=2, max_rounds=1)
    cfg.rewards.max_error_rate = 0.1

    def broken(rows):
        return [RewardResult(0.0, status="error", info={"row": r.get("answer")}) for r in rows]

    with pytest.raises(TrainingError, match=r"reward error/timeout rate 100.0% above .*failing rows: "):
        collect_rollouts(cfg, 0, run_settings(cfg), next_rows=_rows, tokenize=lambda r: [7],
                         generate=Script(lambda i, j: True), score=broken, dp_size=1)
    with pytest.raises(DynamicSamplingExhausted):  # healthy rewards, no variance: the sampler's own error
        collect_rollouts(cfg, 0, run_settings(cfg), next_rows=_rows, tokenize=lambda r: [7],
                         generate=Script(lambda i, j: True), score=_score, dp_size=1)


def test_the_error_streak_aborts_after_the_window():
    cfg = _cfg()
    cfg.rewards.error_window_steps = 2
    bad = RolloutBatch(groups=[], metrics={"reward/error_rate": 0.5}, failing='[["p0", "error", {}]]')
    good = RolloutBatch(groups=[], metrics={"reward/error_rate": 0.0})
    assert reward_error_streak(bad, 0, cfg.rewards) == 1
    assert reward_error_streak(good, 1, cfg.rewards) == 0
    with pytest.raises(TrainingError, match=r"reward error rate 50.0% above .* for 2 steps; failing rows"):
        reward_error_streak(bad, 1, cfg.rewards)
