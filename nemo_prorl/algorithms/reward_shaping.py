"""Reward shaping applied after scoring and before advantages.

* Stop-properly penalty (NeMo-RL ``stop_properly_penalty_coef``; ProRL runs 4-5 penalise responses that
  do not terminate): a response that hit the length limit without an end-of-sequence token gets
  ``reward * coef`` (coef 0 zeroes it, 1 leaves it unchanged).
* DAPO overlong shaping: with ``expected = max_len - buffer_len`` and ``exceed = length - expected``,
  the reward gets ``min(-exceed / buffer_len * penalty_factor, 0)`` added: 0 up to ``expected``, then a
  linear ramp to ``-penalty_factor`` at ``max_len``.
* Scheduled cosine length penalty (ProRL v2: the NVIDIA technical blog "Scaling LLM Reinforcement
  Learning with Prolonged Training Using ProRL v2", Aug 2025, lists "scheduled cosine length penalties"
  and "scheduled length regularization" but publishes neither the formula nor the schedule; NeMo-RL's
  ``prorlv2.v2.yaml`` has no length penalty). The shape chosen here is the cosine length-scaling
  function of Yeo et al. 2025 (arXiv 2502.03373, ``CosFn(t, T, eta_min, eta_max) = eta_min + (eta_max -
  eta_min)(1 + cos(t pi / T)) / 2``) with eta_max = 0 at length 0 and eta_min = -w at the cap ``T``:

      p(L) = -w * (1 - cos(pi * min(L, T) / T)) / 2

  and the schedule of w is again a cosine, over the steps of the phase (it restarts at each phase):
  ``w(s) = w_end + (w_start - w_end) * (1 + cos(pi * min(s, S) / S)) / 2`` with s the step within the
  phase and S the schedule length. The position s is a function of the global step only
  (:func:`phase_position`), so a resumed run continues the schedule exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from nemo_prorl.algorithms.config import RewardShapingConfig


def stop_properly_penalty(rewards: torch.Tensor, truncated: torch.Tensor, coef: float) -> torch.Tensor:
    """Scale the rewards of truncated responses.

    Args:
        rewards: ``[B]`` rewards.
        truncated: ``[B]`` bool, True where the response hit the length limit.
        coef: multiplier in [0, 1] for truncated responses.

    Returns:
        ``[B]`` shaped rewards.

    """
    if truncated.shape != rewards.shape:
        raise ValueError(
            f"truncated {tuple(truncated.shape)} must have the shape of rewards {tuple(rewards.shape)}"
        )
    if not 0.0 <= coef <= 1.0:
        raise ValueError(f"stop_properly_penalty_coef must be in [0, 1] (got {coef})")
    return torch.where(truncated.bool(), rewards * coef, rewards)


def overlong_penalty(
    lengths: torch.Tensor, *, max_len: int, buffer_len: int, penalty_factor: float = 1.0
) -> torch.Tensor:
    """DAPO's soft overlong penalty (<= 0), to be added to the rewards.

    Args:
        lengths: ``[B]`` response lengths in tokens.
        max_len: maximum response length.
        buffer_len: length of the linear ramp before ``max_len`` (``0 < buffer_len < max_len``).
        penalty_factor: penalty at ``max_len`` (>= 0).

    Returns:
        ``[B]`` float penalties: 0 for ``length <= max_len - buffer_len``, ``-penalty_factor`` at ``max_len``.

    """
    if not 0 < buffer_len < max_len:
        raise ValueError(f"need 0 < buffer_len < max_len (got buffer_len={buffer_len}, max_len={max_len})")
    if penalty_factor < 0:
        raise ValueError(f"penalty_factor must be >= 0 (got {penalty_factor})")
    expected = max_len - buffer_len
    exceed = lengths.to(torch.float64) - expected
    return torch.clamp(-exceed / buffer_len * penalty_factor, max=0.0).to(torch.get_default_dtype())


def phase_position(phase_steps: Sequence[int], step: int, max_steps: int) -> tuple[int, int]:
    """Where 0-based global ``step`` lies in its phase (the last phase extends to ``max_steps``).

    Args:
        phase_steps: the ``steps`` of each configured phase, in order (empty: one phase-less run).
        step: 0-based global step (the trainer's ``step`` before the step runs).
        max_steps: ``trainer.max_steps``.

    Returns:
        ``(step_in_phase, phase_length)`` with the semantics of ``ProRLConfig.phase_at``.

    """
    if step < 0:
        raise ValueError(f"step must be >= 0 (got {step})")
    start = 0
    for i, n in enumerate(phase_steps):
        last = i == len(phase_steps) - 1
        if step < start + n or last:
            return step - start, max(n, max_steps - start) if last else n
        start += n
    return step, max(max_steps, 1)


def length_penalty_weight(cfg: RewardShapingConfig, step_in_phase: int, phase_steps: int) -> float:
    """The length-penalty weight w at ``step_in_phase`` of a phase of ``phase_steps`` steps.

    ``constant``: ``length_penalty_coef``. ``cosine``: from ``length_penalty_coef`` at step 0 down to
    ``length_penalty_coef_end`` at ``length_penalty_steps`` (default the phase's length), then flat.
    """
    w0, w1 = float(cfg.length_penalty_coef), float(cfg.length_penalty_coef_end)
    if cfg.length_penalty_schedule == "constant":
        return w0
    if cfg.length_penalty_schedule != "cosine":
        raise ValueError(f"unknown length_penalty_schedule {cfg.length_penalty_schedule!r}")
    total = cfg.length_penalty_steps if cfg.length_penalty_steps is not None else phase_steps
    frac = min(max(step_in_phase, 0), max(total, 1)) / max(total, 1)
    return w1 + (w0 - w1) * 0.5 * (1.0 + math.cos(math.pi * frac))


def cosine_length_penalty(lengths: torch.Tensor, *, weight: float, cap: int) -> torch.Tensor:
    """``-weight * (1 - cos(pi * min(L, cap) / cap)) / 2`` per response (<= 0), to be added to the rewards.

    Args:
        lengths: ``[B]`` response lengths in tokens.
        weight: penalty at and beyond ``cap`` (>= 0).
        cap: length at which the penalty is complete (>= 1).

    Returns:
        ``[B]`` float64 penalties: 0 at length 0, ``-weight / 2`` at ``cap / 2``, ``-weight`` from ``cap`` on.

    """
    if cap < 1:
        raise ValueError(f"length penalty cap must be >= 1 (got {cap})")
    if weight < 0:
        raise ValueError(f"length penalty weight must be >= 0 (got {weight})")
    frac = lengths.to(torch.float64).clamp(0, cap) / cap
    return -weight * 0.5 * (1.0 - torch.cos(math.pi * frac))


def shape_rewards(
    rewards: torch.Tensor,
    cfg: RewardShapingConfig,
    *,
    truncated: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    step_in_phase: int = 0,
    phase_steps: int = 1,
) -> torch.Tensor:
    """Apply the shaping configured in ``cfg`` (stop-properly, then overlong, then the length penalty).

    Args:
        rewards: ``[B]`` task rewards.
        cfg: shaping settings.
        truncated: ``[B]`` bool; required when ``stop_properly_penalty_coef`` is set.
        lengths: ``[B]`` response lengths; required when ``overlong_enable`` or a length penalty is on.
        step_in_phase: position in the phase (see :func:`phase_position`) for the length-penalty schedule.
        phase_steps: the phase's length in steps.

    Returns:
        ``[B]`` shaped rewards (dtype of ``rewards``); ``rewards`` itself is not modified.

    """
    out = rewards.clone()
    if cfg.stop_properly_penalty_coef is not None:
        if truncated is None:
            raise ValueError("truncated flags are required when stop_properly_penalty_coef is set")
        out = stop_properly_penalty(out, truncated, float(cfg.stop_properly_penalty_coef))
    if cfg.overlong_enable:
        if lengths is None:
            raise ValueError("response lengths are required when overlong_enable is true")
        if cfg.max_response_len is None:
            raise ValueError(
                "reward_shaping.max_response_len must be set when overlong_enable is true (the trainer "
                "sets it to the phase's max_response_tokens: trainer.preflight.shaping_for_phase)"
            )
        if lengths.shape != rewards.shape:
            raise ValueError(
                f"lengths {tuple(lengths.shape)} must have the shape of rewards {tuple(rewards.shape)}"
            )
        pen = overlong_penalty(
            lengths,
            max_len=cfg.max_response_len,
            buffer_len=cfg.overlong_buffer_len,
            penalty_factor=cfg.overlong_penalty_factor,
        )
        out = out + pen.to(out.dtype)
    weight = length_penalty_weight(cfg, step_in_phase, phase_steps) if cfg.length_penalty_coef > 0 else 0.0
    if weight > 0:
        if lengths is None or lengths.shape != rewards.shape:
            raise ValueError("response lengths [B] are required when length_penalty_coef > 0")
        cap = cfg.length_penalty_len if cfg.length_penalty_len is not None else cfg.max_response_len
        if cap is None:
            raise ValueError("reward_shaping.length_penalty_len or max_response_len must be set for the "
                             "length penalty (the trainer fills max_response_len per phase)")
        out = out + cosine_length_penalty(lengths, weight=weight, cap=int(cap)).to(out.dtype)
    return out
