"""Group-relative advantages (GRPO) and their broadcast over response tokens.

For a group g of n responses to the same prompt with rewards r_1..r_n:

* baseline b_i = mean_g(r) (GRPO), or the leave-one-out mean (sum_g(r) - r_i) / (n - 1);
* A_i = r_i - b_i, divided by (std_g(r) + eps) when std normalisation is on, where std_g is the
  unbiased (n - 1) standard deviation of the whole group, as in verl;
* a group of one response has no baseline and gets A = 0.

All reductions run in float64 and the result is cast back to the rewards' dtype.
"""

from __future__ import annotations

import torch

from nemo_prorl.algorithms.config import AdvantageConfig
from nemo_prorl.algorithms.registry import get_advantage_estimator, register_advantage_estimator


def group_ids_from_size(batch_size: int, group_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Group ids for a batch laid out as consecutive groups of ``group_size`` samples.

    Returns:
        ``[batch_size]`` long tensor ``[0]*group_size + [1]*group_size + ...``.

    Raises:
        ValueError: when ``group_size < 1`` or ``batch_size`` is not a multiple of it.

    """
    if group_size < 1 or batch_size % group_size:
        raise ValueError(f"batch of {batch_size} samples does not split into groups of {group_size}")
    return torch.arange(batch_size, device=device) // group_size


def _resolve_groups(
    rewards: torch.Tensor, group_ids: torch.Tensor | None, group_size: int | None
) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B] (got shape {tuple(rewards.shape)})")
    if (group_ids is None) == (group_size is None):
        raise ValueError("pass exactly one of group_ids or group_size")
    if group_ids is None:
        assert group_size is not None
        return group_ids_from_size(rewards.numel(), group_size, rewards.device)
    if group_ids.shape != rewards.shape:
        raise ValueError(
            f"group_ids must have the shape of rewards {tuple(rewards.shape)} (got {tuple(group_ids.shape)})"
        )
    return group_ids.to(rewards.device)


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor | None = None,
    *,
    group_size: int | None = None,
    norm_std: bool = True,
    leave_one_out: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Group-relative advantage of each sample.

    Args:
        rewards: ``[B]`` scalar reward per sample.
        group_ids: ``[B]`` integer id of each sample's group (any values; samples need not be contiguous).
        group_size: alternative to ``group_ids``: consecutive groups of this size.
        norm_std: divide by the group's unbiased std plus ``eps``.
        leave_one_out: baseline is the mean of the *other* samples of the group.
        eps: added to the std.

    Returns:
        ``[B]`` advantages, same dtype as ``rewards``; 0 for single-sample groups and for groups whose
        rewards are all equal.

    Raises:
        ValueError: on shape mismatch, both/neither of ``group_ids``/``group_size``, or non-finite rewards.

    """
    gid = _resolve_groups(rewards, group_ids, group_size)
    if rewards.numel() == 0:
        return rewards.clone()
    if not torch.isfinite(rewards).all():
        bad = torch.nonzero(~torch.isfinite(rewards)).flatten()[:5].tolist()
        raise ValueError(f"rewards must be finite; non-finite at sample indices {bad}")
    _, inverse = torch.unique(gid, return_inverse=True)
    num_groups = int(inverse.max()) + 1
    r = rewards.to(torch.float64)
    count = torch.zeros(num_groups, dtype=torch.float64, device=r.device).index_add_(
        0, inverse, torch.ones_like(r)
    )
    total = torch.zeros(num_groups, dtype=torch.float64, device=r.device).index_add_(0, inverse, r)
    n = count[inverse]
    s = total[inverse]
    multi = n > 1
    mean = s / n
    if leave_one_out:
        baseline = torch.where(multi, (s - r) / (n - 1).clamp_min(1), r)
    else:
        baseline = mean
    adv = r - baseline
    if norm_std:
        sq = torch.zeros(num_groups, dtype=torch.float64, device=r.device).index_add_(
            0, inverse, (r - mean) ** 2
        )
        std = torch.sqrt(sq[inverse] / (n - 1).clamp_min(1))
        adv = adv / (std + eps)
    adv = torch.where(multi, adv, torch.zeros_like(adv))
    return adv.to(rewards.dtype)


@register_advantage_estimator("grpo")
def grpo_advantage(rewards: torch.Tensor, group_ids: torch.Tensor, cfg: AdvantageConfig) -> torch.Tensor:
    """GRPO advantage with the switches of :class:`AdvantageConfig` (see :func:`group_advantages`).

    Args:
        rewards: ``[B]`` rewards.
        group_ids: ``[B]`` group ids.
        cfg: advantage settings.

    Returns:
        ``[B]`` advantages.

    """
    return group_advantages(
        rewards, group_ids, norm_std=cfg.norm_std, leave_one_out=cfg.leave_one_out, eps=cfg.eps
    )


def compute_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, cfg: AdvantageConfig) -> torch.Tensor:
    """Advantages with the estimator named by ``cfg.estimator`` (looked up in the registry).

    Args:
        rewards: ``[B]`` rewards.
        group_ids: ``[B]`` group ids.
        cfg: advantage settings.

    Returns:
        ``[B]`` advantages.

    """
    return get_advantage_estimator(cfg.estimator)(rewards, group_ids, cfg)


def broadcast_to_tokens(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Copy each sample's scalar advantage to its response tokens.

    Args:
        advantages: ``[B]`` one scalar per sample.
        mask: ``[B, T]`` 1 on response tokens, 0 elsewhere.

    Returns:
        ``[B, T]`` advantages, 0 where ``mask`` is 0 (dtype of ``advantages``).

    """
    if advantages.dim() != 1 or mask.dim() != 2 or mask.shape[0] != advantages.shape[0]:
        raise ValueError(
            f"expected advantages [B] and mask [B, T] (got {tuple(advantages.shape)} and {tuple(mask.shape)})"
        )
    return advantages[:, None] * mask.to(advantages.dtype)
