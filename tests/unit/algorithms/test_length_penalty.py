"""Scheduled cosine length penalty (ProRL v2) against hand-computed values, and its resume behaviour.

Shape: Yeo et al. 2025 (arXiv 2502.03373) ``CosFn`` with eta_max = 0 and eta_min = -w; schedule: cosine
decay of w over the phase (see ``nemo_prorl/algorithms/reward_shaping.py`` for what is published and
what is chosen).
"""

import math

import pytest
import torch

from nemo_prorl.algorithms.config import RewardShapingConfig
from nemo_prorl.algorithms.reward_shaping import (
    cosine_length_penalty,
    length_penalty_weight,
    phase_position,
    shape_rewards,
)
from nemo_prorl.config_schema import ConfigError, check


def test_cosine_penalty_hand_computed():
    pen = cosine_length_penalty(torch.tensor([0, 25, 50, 75, 100, 400]), weight=0.4, cap=100)
    # (1 - cos(pi * f)) / 2 at f = 0, 1/4, 1/2, 3/4, 1, 1 (clamped)
    half = 0.5 * (1 - math.cos(math.pi / 4))
    expected = torch.tensor([0.0, half, 0.5, 1 - half, 1.0, 1.0], dtype=torch.float64) * -0.4
    torch.testing.assert_close(pen, expected)


def test_cosine_schedule_hand_computed():
    cfg = RewardShapingConfig(length_penalty_coef=0.4, length_penalty_coef_end=0.1)
    # w(s) = 0.1 + 0.3 * (1 + cos(pi * s / 8)) / 2 over a phase of 8 steps, flat after it
    for s, w in [(0, 0.4), (4, 0.25), (8, 0.1), (12, 0.1)]:
        assert length_penalty_weight(cfg, s, 8) == pytest.approx(w)
    assert length_penalty_weight(cfg, 2, 8) == pytest.approx(0.1 + 0.15 * (1 + math.cos(math.pi / 4)))
    cfg = RewardShapingConfig(length_penalty_coef=0.4, length_penalty_steps=2)
    assert length_penalty_weight(cfg, 1, 100) == pytest.approx(0.2)
    cfg = RewardShapingConfig(length_penalty_coef=0.4, length_penalty_schedule="constant")
    assert length_penalty_weight(cfg, 77, 100) == 0.4


def test_shape_rewards_applies_the_scheduled_penalty_after_the_other_shaping():
    cfg = RewardShapingConfig(stop_properly_penalty_coef=0.0, length_penalty_coef=1.0, max_response_len=10)
    rewards = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    lengths = torch.tensor([5, 10, 0])
    truncated = torch.tensor([False, True, False])
    # step 0 of a 4-step phase: w = 1; the truncated response is zeroed first, then penalised
    out = shape_rewards(rewards, cfg, truncated=truncated, lengths=lengths, step_in_phase=0, phase_steps=4)
    torch.testing.assert_close(out, torch.tensor([0.5, -1.0, 0.0], dtype=torch.float64))
    # step 2 of 4: w = 0.5; an explicit cap of 20 tokens
    cfg.length_penalty_len = 20
    out = shape_rewards(rewards, cfg, truncated=truncated, lengths=lengths, step_in_phase=2, phase_steps=4)
    q = 0.5 * (1 - math.cos(math.pi / 4))
    torch.testing.assert_close(out, torch.tensor([1 - 0.5 * q, -0.25, 0.0], dtype=torch.float64))
    # at the schedule's end (coef_end 0) the penalty is off
    out = shape_rewards(rewards, cfg, truncated=truncated, lengths=lengths, step_in_phase=4, phase_steps=4)
    torch.testing.assert_close(out, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="lengths"):
        shape_rewards(rewards, cfg, truncated=truncated)


def test_phase_position_follows_phase_at():
    phases = [3, 2, 4]
    got = [phase_position(phases, s, 12) for s in range(12)]
    assert got == [(0, 3), (1, 3), (2, 3), (0, 2), (1, 2), (0, 7), (1, 7), (2, 7), (3, 7), (4, 7), (5, 7),
                   (6, 7)]
    assert phase_position([], 5, 10) == (5, 10)
    assert phase_position([3, 8], 4, 6) == (1, 8)  # a run cut short keeps the configured phase length


def test_schedule_resumed_mid_way_equals_an_uninterrupted_one():
    """The weights a run uses at each step, run uninterrupted vs stopped at step 7 and resumed.

    The trainer keeps no schedule state: the position is recomputed from the restored global step, so
    the resumed half must be bit-identical (this is what makes ``trainer.resume`` exact).
    """
    phases = [5, 6, 9]
    per_phase = [RewardShapingConfig(length_penalty_coef=0.3), RewardShapingConfig(length_penalty_coef=0.2,
                 length_penalty_coef_end=0.05), RewardShapingConfig(length_penalty_schedule="constant",
                                                                    length_penalty_coef=0.1)]
    lengths = torch.tensor([3, 40, 77, 128])
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)

    def run(start, stop):
        out = []
        for step in range(start, stop):
            pos, n = phase_position(phases, step, 20)
            idx = next(i for i in range(3) if step < sum(phases[: i + 1]) or i == 2)
            cfg = per_phase[idx]
            cfg.max_response_len = 128
            out.append(shape_rewards(rewards, cfg, lengths=lengths, step_in_phase=pos, phase_steps=n))
        return out

    whole = run(0, 20)
    resumed = run(0, 7) + run(7, 20)
    for a, b in zip(whole, resumed, strict=True):
        assert torch.equal(a, b)
    # and the schedule really moved: phase starts restart it at full weight
    assert not torch.equal(whole[0], whole[4]) and torch.equal(whole[0], run(0, 1)[0])
    assert torch.equal(whole[11], whole[19])  # the constant phase


def test_config_validation():
    with pytest.raises(ConfigError, match="algorithm.reward_shaping.length_penalty_schedule"):
        check(RewardShapingConfig(length_penalty_schedule="linear"), "algorithm.reward_shaping")
    with pytest.raises(ConfigError, match="algorithm.reward_shaping.length_penalty_coef"):
        check(RewardShapingConfig(length_penalty_coef=-1.0), "algorithm.reward_shaping")
    with pytest.raises(ConfigError, match="algorithm.reward_shaping.length_penalty_steps"):
        check(RewardShapingConfig(length_penalty_steps=0), "algorithm.reward_shaping")
