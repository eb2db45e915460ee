"""``phases.phase_settings``: the frozen settings of a step, from the config alone."""

from __future__ import annotations

import dataclasses

import pytest

from nemo_prorl.trainer.config import PhaseConfig, ProRLConfig
from nemo_prorl.trainer.phases import phase_reset_cause, phase_settings, run_settings


def _cfg() -> ProRLConfig:
    cfg = ProRLConfig()
    cfg.rollout.n, cfg.rollout.temperature, cfg.rollout.max_response_tokens = 8, 1.2, 64
    return cfg


def test_a_run_without_phases_has_the_rollout_settings_at_every_step():
    cfg = _cfg()
    for step in (0, 7, 10_000):
        s = phase_settings(cfg, step)
        assert (s.index, s.name, s.n, s.temperature, s.max_response_tokens) == (-1, None, 8, 1.2, 64)
        assert s.mixture is None and not s.reset_at_start
        assert s.shaping.max_response_len == 64  # the overlong ramp ends at the response cap
    assert phase_settings(cfg, 3) == run_settings(cfg)


def test_phases_fall_back_to_the_run_and_the_last_extends_to_the_end():
    cfg = _cfg()
    cfg.phases = [PhaseConfig(name="warm", steps=2),
                  PhaseConfig(name="long", steps=3, reset=True, n=16, temperature=0.0,
                              max_response_tokens=128, mixture={"math": 1.0},
                              reward_shaping={"length_penalty_coef": 0.5})]
    warm = [phase_settings(cfg, s) for s in (0, 1)]
    long = [phase_settings(cfg, s) for s in (2, 4, 99)]  # 99: past the last phase's steps
    assert warm[0] == warm[1]
    assert (warm[0].index, warm[0].name, warm[0].n, warm[0].temperature, warm[0].max_response_tokens) == \
        (0, "warm", 8, 1.2, 64)
    assert all(s == long[0] for s in long)
    s = long[0]
    assert (s.index, s.name, s.n, s.temperature, s.max_response_tokens) == (1, "long", 16, 0.0, 128)
    assert s.mixture == {"math": 1.0} and s.reset_at_start
    assert s.shaping.length_penalty_coef == 0.5 and s.shaping.max_response_len == 128
    assert cfg.algorithm.reward_shaping.length_penalty_coef == 0.0  # the config is not written to
    assert s.policy_temperature == 1.0  # greedy sampling: log-probs of the untempered distribution
    assert warm[0].policy_temperature == 1.2


def test_settings_are_frozen():
    s = run_settings(_cfg())
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n = 4  # type: ignore[misc]


@pytest.mark.parametrize("step,resuming,expected", [(0, False, None), (5, True, None),
                                                    (5, False, "phase 'long' starts with a reset")])
def test_a_phase_reset_fires_on_entry_after_step_0_and_not_on_resume(step, resuming, expected):
    cfg = _cfg()
    cfg.phases = [PhaseConfig(name="long", steps=10, reset=True)]
    assert phase_reset_cause(phase_settings(cfg, step), step, resuming) == expected
    cfg.phases = [PhaseConfig(name="long", steps=10, reset=False)]
    assert phase_reset_cause(phase_settings(cfg, step), step, resuming) is None
