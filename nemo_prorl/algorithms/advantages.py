"""Group-relative advantages (GRPO) and their broadcast over response tokens.

For a group g of n responses to the same prompt with rewards r_1..r_n:

* baseline b_i = mean_g(r) (GRPO), or the leave-one-out mean (sum_g(r) - r_i) / (n - 1);
* A_i = r_i - b_i, divided by (std_g(r) + eps) when std normalisation is on, where std_g is the
  unbiased (n - 1) standard deviation of the whole group, as in verl;
* a group of one response has no baseline and gets A = 0.

REINFORCE++-baseline (ProRL v2; NeMo-RL ``ReinforcePlusPlusAdvantageEstimator`` in
``nemo_rl/algorithms/advantage_estimator.py`` with ``minus_baseline: true``, as configured by
``examples/configs/prorlv2.v2.yaml`` and described in ``docs/guides/prorlv2.md``):

* local step: a_i = r_i - mean_g(r) (plain mean of the prompt's group, never leave-one-out);
  ``reinforce_pp`` skips it (a_i = r_i, NeMo-RL ``minus_baseline: false``);
* global step, over every valid response token of the whole batch (all data-parallel ranks): each
  sample's a_i counts once per response token, so with n_i tokens and N = sum_i n_i

      mu = sum_i n_i a_i / N,     var = sum_i n_i (a_i - mu)^2 / N   (population variance),
      A_i = (a_i - mu) / sqrt(max(var, global_var_floor))           (NeMo-RL floor 1e-8).

  Unlike GRPO, single-sample and zero-variance groups are not special-cased: their a_i = 0 becomes
  -mu / sqrt(var), exactly as in NeMo-RL.

All reductions run in float64 and the result is cast back to the rewards' dtype.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from nemo_prorl.algorithms import collectives
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


def group_mean_baseline(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """``r_i - mean_g(r)`` with the plain group mean (the local step of REINFORCE++-baseline).

    Args:
        rewards: ``[B]`` rewards (finite).
        group_ids: ``[B]`` group ids; every group must be whole in this batch.

    Returns:
        ``[B]`` float64 centred rewards (0 for a single-sample group).

    """
    _, inverse = torch.unique(group_ids.to(rewards.device), return_inverse=True)
    num_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    r = rewards.to(torch.float64)
    count = torch.zeros(num_groups, dtype=torch.float64, device=r.device).index_add_(
        0, inverse, torch.ones_like(r)
    )
    total = torch.zeros(num_groups, dtype=torch.float64, device=r.device).index_add_(0, inverse, r)
    return r - (total / count)[inverse]


def global_token_normalise(
    values: torch.Tensor,
    num_tokens: torch.Tensor,
    *,
    var_floor: float = 1e-8,
    dp_group: Any = None,
) -> torch.Tensor:
    """Whiten per-sample values with the token-weighted mean and variance of the whole batch.

    Each sample's value stands for its ``num_tokens[i]`` response tokens (the advantage is broadcast
    over them), so the statistics are those of NeMo-RL's masked token tensor:
    ``mu = sum n_i v_i / N``, ``var = sum n_i (v_i - mu)^2 / N``, ``out = (v - mu) / sqrt(max(var, floor))``.

    Args:
        values: ``[B]`` per-sample values (this rank's share of the batch).
        num_tokens: ``[B]`` valid response tokens of each sample (>= 0).
        var_floor: lower bound of the variance before the square root (NeMo-RL 1e-8).
        dp_group: process group whose ranks hold the other shares of the batch: the sums
            (``sum n v``, ``N``, then ``sum n (v - mu)^2``) are all-reduced over it through
            :mod:`nemo_prorl.collectives`, so DP ranks each holding half a batch get exactly the values
            of one rank holding all of it. None: this rank holds the whole batch, nothing is reduced.

    Returns:
        ``[B]`` float64 normalised values; samples with no token still get a value (it is masked later).

    Raises:
        ValueError: on shape mismatch, negative token counts, or when the batch has no valid token.

    """
    if num_tokens.shape != values.shape:
        raise ValueError(
            f"num_tokens {tuple(num_tokens.shape)} must have the shape of the values {tuple(values.shape)}"
        )
    w = num_tokens.to(device=values.device, dtype=torch.float64)
    if bool((w < 0).any()):
        raise ValueError("num_tokens must be >= 0")
    v = values.to(torch.float64)
    sums = torch.stack([(w * v).sum(), w.sum()])
    if dp_group is not None:
        collectives.all_reduce(sums, group=dp_group)
    if float(sums[1]) <= 0:
        raise ValueError("global advantage normalisation needs at least one valid response token")
    mu = sums[0] / sums[1]
    sq = (w * (v - mu) ** 2).sum().reshape(1)
    if dp_group is not None:
        collectives.all_reduce(sq, group=dp_group)
    var = sq[0] / sums[1]
    return (v - mu) / torch.sqrt(var.clamp_min(var_floor))


def _reinforce_pp(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    cfg: AdvantageConfig,
    *,
    minus_baseline: bool,
    num_tokens: torch.Tensor | None,
    dp_group: Any,
) -> torch.Tensor:
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must both be [B] "
            f"(got {tuple(rewards.shape)} and {tuple(group_ids.shape)})"
        )
    if rewards.numel() == 0 and dp_group is None:
        return rewards.clone()
    if not torch.isfinite(rewards).all():
        bad = torch.nonzero(~torch.isfinite(rewards)).flatten()[:5].tolist()
        raise ValueError(f"rewards must be finite; non-finite at sample indices {bad}")
    if num_tokens is None:  # every sample weighs the same (sequence-level statistics)
        num_tokens = torch.ones_like(rewards, dtype=torch.float64)
    a = group_mean_baseline(rewards, group_ids) if minus_baseline else rewards.to(torch.float64)
    out = global_token_normalise(a, num_tokens, var_floor=cfg.global_var_floor, dp_group=dp_group)
    return out.to(rewards.dtype)


@register_advantage_estimator("reinforce_pp_baseline")
def reinforce_pp_baseline_advantage(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    cfg: AdvantageConfig,
    *,
    num_tokens: torch.Tensor | None = None,
    dp_group: Any = None,
) -> torch.Tensor:
    """REINFORCE++-baseline (ProRL v2): group-mean baseline, then global token-weighted whitening.

    Follows NeMo-RL ``ReinforcePlusPlusAdvantageEstimator.compute_advantage`` with ``minus_baseline=True``
    and ``use_kl_in_reward=False`` (the ``prorlv2.v2.yaml`` settings); see the module docstring.

    Args:
        rewards: ``[B]`` rewards of this rank's share of the batch.
        group_ids: ``[B]`` group ids; each group must be whole on this rank.
        cfg: advantage settings (``global_var_floor``).
        num_tokens: ``[B]`` valid response tokens per sample (the token weights of the global
            statistics); None weighs every sample once.
        dp_group: the data-parallel group to reduce the global statistics over (None: the batch is whole
            here; see :func:`global_token_normalise`).

    Returns:
        ``[B]`` advantages (dtype of ``rewards``).

    """
    return _reinforce_pp(rewards, group_ids, cfg, minus_baseline=True, num_tokens=num_tokens,
                         dp_group=dp_group)


@register_advantage_estimator("reinforce_pp")
def reinforce_pp_advantage(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    cfg: AdvantageConfig,
    *,
    num_tokens: torch.Tensor | None = None,
    dp_group: Any = None,
) -> torch.Tensor:
    """Plain REINFORCE++ (NeMo-RL ``minus_baseline=False``): global token-weighted whitening of the rewards.

    Same arguments and result as :func:`reinforce_pp_baseline_advantage`, without the group baseline.
    """
    return _reinforce_pp(rewards, group_ids, cfg, minus_baseline=False, num_tokens=num_tokens,
                         dp_group=dp_group)


@register_advantage_estimator("grpo")
def grpo_advantage(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    cfg: AdvantageConfig,
    *,
    num_tokens: torch.Tensor | None = None,
    dp_group: Any = None,
) -> torch.Tensor:
    """GRPO advantage with the switches of :class:`AdvantageConfig` (see :func:`group_advantages`).

    Args:
        rewards: ``[B]`` rewards.
        group_ids: ``[B]`` group ids.
        cfg: advantage settings.
        num_tokens: unused (group statistics only; accepted for the common estimator signature).
        dp_group: unused (groups are whole on a rank, so nothing is reduced).

    Returns:
        ``[B]`` advantages.

    """
    return group_advantages(
        rewards, group_ids, norm_std=cfg.norm_std, leave_one_out=cfg.leave_one_out, eps=cfg.eps
    )


def compute_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    cfg: AdvantageConfig,
    *,
    num_tokens: torch.Tensor | None = None,
    dp_group: Any = None,
) -> torch.Tensor:
    """Advantages with the estimator named by ``cfg.estimator`` (looked up in the registry).

    Args:
        rewards: ``[B]`` rewards.
        group_ids: ``[B]`` group ids.
        cfg: advantage settings.
        num_tokens: ``[B]`` valid response tokens per sample (batch-level estimators weigh by them).
        dp_group: data-parallel group holding the rest of the batch (None: the batch is whole here).

    Returns:
        ``[B]`` advantages.

    """
    fn = get_advantage_estimator(cfg.estimator)
    extra = {k: v for k, v in (("num_tokens", num_tokens), ("dp_group", dp_group)) if v is not None}
    if extra:  # plug-in estimators with the 3-argument signature get only what they accept
        params = inspect.signature(fn).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            if dp_group is not None and "dp_group" not in params:
                raise ValueError(f"advantage estimator {cfg.estimator!r} takes no dp_group, so it cannot "
                                 "reduce its statistics over data-parallel ranks")
            extra = {k: v for k, v in extra.items() if k in params}
    return fn(rewards, group_ids, cfg, **extra)


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
