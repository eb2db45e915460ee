"""Reward shaping applied after scoring and before advantages.

* Stop-properly penalty (NeMo-RL ``stop_properly_penalty_coef``; ProRL runs 4-5 penalise responses that
  do not terminate): a response that hit the length limit without an end-of-sequence token gets
  ``reward * coef`` (coef 0 zeroes it, 1 leaves it unchanged).
* DAPO overlong shaping: with ``expected = max_len - buffer_len`` and ``exceed = length - expected``,
  the reward gets ``min(-exceed / buffer_len * penalty_factor, 0)`` added: 0 up to ``expected``, then a
  linear ramp to ``-penalty_factor`` at ``max_len``.
"""

from __future__ import annotations

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


def shape_rewards(
    rewards: torch.Tensor,
    cfg: RewardShapingConfig,
    *,
    truncated: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply the shaping configured in ``cfg`` (stop-properly first, then overlong).

    Args:
        rewards: ``[B]`` task rewards.
        cfg: shaping settings.
        truncated: ``[B]`` bool; required when ``stop_properly_penalty_coef`` is set.
        lengths: ``[B]`` response lengths; required when ``overlong_enable``.

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
    return out
