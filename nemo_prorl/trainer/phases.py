"""The settings in force at a step: a pure function of the config and the step.

A run without ``phases`` has one set of settings for every step (``rollout.*`` and
``algorithm.reward_shaping``); with phases, step ``s`` (0-based) uses the phase whose step range contains
it, and the last phase extends to the end of the run. A phase's ``None`` fields fall back to the run's.
The trainer asks for the settings of each step and passes the value to the stages; nothing is stored in
the config or the policy's config.
"""

from __future__ import annotations

from typing import Any

from nemo_prorl.trainer.preflight import shaping_for_phase
from nemo_prorl.trainer.records import PhaseSettings


def run_settings(cfg: Any) -> PhaseSettings:
    """The run's own settings (``rollout.*``, ``algorithm.reward_shaping``).

    They hold for every step of a run without phases, and before the first phase is entered (the
    validation at step 0).
    """
    r = cfg.rollout
    shaping = shaping_for_phase(cfg.algorithm.reward_shaping, {}, r.max_response_tokens)
    return PhaseSettings(index=-1, name=None, n=r.n, temperature=r.temperature,
                         max_response_tokens=r.max_response_tokens, shaping=shaping)


def phase_settings(cfg: Any, step: int) -> PhaseSettings:
    """The :class:`PhaseSettings` of 0-based ``step``.

    Args:
        cfg: the :class:`~nemo_prorl.trainer.config.ProRLConfig`.
        step: the step about to run (0-based).

    Returns:
        The phase's settings (:func:`run_settings`, ``index == -1``, for a run without phases).

    """
    r = cfg.rollout
    idx, phase = cfg.phase_at(step)
    if phase is None:
        return run_settings(cfg)
    max_response = phase.max_response_tokens or r.max_response_tokens
    mixture = phase.mixture if phase.mixture is not None else cfg.data.weights_for_phase(phase.name)
    return PhaseSettings(
        index=idx, name=phase.name, n=phase.n or r.n,
        temperature=r.temperature if phase.temperature is None else phase.temperature,
        max_response_tokens=max_response,
        shaping=shaping_for_phase(cfg.algorithm.reward_shaping, phase.reward_shaping, max_response),
        mixture=mixture, reset_at_start=bool(phase.reset),
    )


def phase_reset_cause(settings: PhaseSettings, step: int, resuming: bool) -> str | None:
    """The reset cause of entering ``settings``' phase at ``step``, or ``None``.

    A phase with ``reset: true`` resets when it is entered after step 0, except when a resumed run
    re-applies it (the reset already happened before the checkpoint).
    """
    if settings.reset_at_start and not resuming and step > 0:
        return f"phase {settings.name!r} starts with a reset"
    return None
