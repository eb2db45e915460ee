"""Dynamic sampling (DAPO / ProRL): drop groups with zero reward variance and refill the batch.

A group whose responses all got the same reward has zero advantage for every token, so it carries no
policy-gradient signal. :class:`DynamicSamplingBuffer` keeps the other groups across generation
rounds until it holds ``target_groups`` of them, cuts the extra, and gives up with
:class:`DynamicSamplingExhausted` after ``max_rounds`` rounds without a full batch.

Groups are opaque payloads (the trainer stores its samples in them); only their rewards are read. The
trainer passes the *shaped* rewards, the ones its advantages are computed from: a group whose task
rewards differ but whose shaped rewards are equal (e.g. every response truncated under a stop-properly
coefficient of 0) has all-zero advantages and is dropped, and a kept group always has some signal.
Single-response groups are dropped too (their variance is zero; GRPO gives them advantage 0), unlike
verl, which keeps them.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

T = TypeVar("T")

MAX_ROUNDS_KEY = "algorithm.dynamic_sampling.max_rounds"


class DynamicSamplingExhausted(RuntimeError):
    """Raised when ``max_rounds`` generation rounds did not yield a full batch of informative groups."""


def _as_list(rewards: Sequence[float] | torch.Tensor, index: int) -> list[float]:
    if isinstance(rewards, torch.Tensor):
        values = rewards.detach().flatten().tolist()
    else:
        try:
            values = [float(v) for v in rewards]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"rewards of group {index} must be a sequence of numbers ({exc})") from None
    if not values:
        raise ValueError(f"group {index} has no rewards")
    return values


def prompts_per_round(prompts_per_step: int, oversample: float) -> int:
    """Prompts generated in each round of a step: ``ceil(oversample * prompts_per_step)``.

    NeMo-RL's ``batch_multiplier`` (ProRL v2 uses 1.5): every round generates the same number, so a round
    that keeps the usual share of informative groups fills the batch in one go.
    """
    if isinstance(prompts_per_step, bool) or not isinstance(prompts_per_step, int) or prompts_per_step < 1:
        raise ValueError(f"prompts_per_step must be a positive integer (got {prompts_per_step!r})")
    if not oversample >= 1:
        raise ValueError(f"algorithm.dynamic_sampling.oversample must be >= 1 (got {oversample!r})")
    return math.ceil(oversample * prompts_per_step - 1e-9)


def has_reward_variance(rewards: Sequence[float] | torch.Tensor, tol: float = 0.0) -> bool:
    """True when the group's rewards are not all equal (``max - min > tol``); a single reward has none."""
    values = _as_list(rewards, 0)
    return max(values) - min(values) > tol


def filter_groups(
    groups: Sequence[T], rewards_per_group: Sequence[Sequence[float] | torch.Tensor], tol: float = 0.0
) -> tuple[list[T], list[int]]:
    """Keep the groups whose rewards vary.

    Args:
        groups: one payload per group.
        rewards_per_group: ``[G][n_g]`` rewards of each group's responses.
        tol: a group with ``max - min <= tol`` is dropped.

    Returns:
        ``(kept payloads, kept indices)`` in input order.

    """
    if len(groups) != len(rewards_per_group):
        raise ValueError(f"got {len(groups)} groups but rewards for {len(rewards_per_group)}")
    kept_idx = []
    for i, r in enumerate(rewards_per_group):
        values = _as_list(r, i)
        if max(values) - min(values) > tol:
            kept_idx.append(i)
    return [groups[i] for i in kept_idx], kept_idx


@dataclass
class DynamicSamplingStats:
    """Counts of one step's dynamic sampling (reported as metrics).

    Attributes:
        rounds: generation rounds used.
        groups_seen: groups offered to the buffer.
        groups_kept: groups that passed the filter (including extra ones cut later).
        groups_dropped: groups dropped for zero reward variance.
        groups_discarded: kept groups cut because the batch was already full.
        partial: 1 when the step trains on a short batch (``max_rounds`` reached with ``partial_ok``).

    """

    rounds: int = 0
    groups_seen: int = 0
    groups_kept: int = 0
    groups_dropped: int = 0
    groups_discarded: int = 0
    partial: int = 0

    def as_metrics(self, prefix: str = "dynamic_sampling/") -> dict[str, float]:
        """Flat metric dict, e.g. ``{"dynamic_sampling/rounds": 2.0, ...}``."""
        return {f"{prefix}{k}": float(v) for k, v in self.__dict__.items()}


class DynamicSamplingBuffer(Generic[T]):
    """Collects informative groups over generation rounds until a batch is full.

    Usage per training step::

        buf = DynamicSamplingBuffer(target_groups=256, max_rounds=10)
        while not buf.ready:
            groups, rewards = generate_and_score(...)
            buf.add(groups, rewards)          # raises DynamicSamplingExhausted after max_rounds
        batch, stats = buf.pop_batch()

    Args:
        target_groups: groups (prompts) per training batch.
        max_rounds: rounds allowed before :class:`DynamicSamplingExhausted`.
        enable: when False every group is kept (filtering off, same code path).
        tol: zero-variance tolerance, see :func:`has_reward_variance`.
        config_key: config key named in the exhaustion error.
        partial_ok: after ``max_rounds`` rounds with at least one informative group, stop and let
            :meth:`pop_batch` return the short batch instead of raising (no informative group still
            raises).

    """

    def __init__(
        self,
        target_groups: int,
        max_rounds: int,
        *,
        enable: bool = True,
        tol: float = 0.0,
        config_key: str = MAX_ROUNDS_KEY,
        partial_ok: bool = False,
    ) -> None:
        if isinstance(target_groups, bool) or not isinstance(target_groups, int) or target_groups < 1:
            raise ValueError(f"target_groups must be a positive integer (got {target_groups!r})")
        if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
            raise ValueError(f"{config_key} must be a positive integer (got {max_rounds!r})")
        self.target_groups = target_groups
        self.max_rounds = max_rounds
        self.enable = enable
        self.tol = tol
        self.config_key = config_key
        self.partial_ok = partial_ok
        self.exhausted = False
        self._groups: list[T] = []
        self.stats = DynamicSamplingStats()
        #: the common reward of each group dropped as all-equal this step (for the exhaustion message)
        self._dropped_at: list[float] = []

    @property
    def full(self) -> bool:
        """Whether the buffer holds at least ``target_groups`` groups."""
        return len(self._groups) >= self.target_groups

    @property
    def ready(self) -> bool:
        """Whether :meth:`pop_batch` can be called: full, or exhausted with ``partial_ok``."""
        return self.full or self.exhausted

    @property
    def num_groups(self) -> int:
        """Groups currently held."""
        return len(self._groups)

    @property
    def missing(self) -> int:
        """Groups still needed to fill the batch."""
        return max(0, self.target_groups - len(self._groups))

    def add(self, groups: Sequence[T], rewards_per_group: Sequence[Sequence[float] | torch.Tensor]) -> int:
        """Offer one generation round's groups.

        Args:
            groups: one payload per group.
            rewards_per_group: ``[G][n_g]`` rewards of each group (the trainer passes the shaped ones).

        Returns:
            Number of groups kept from this round.

        Raises:
            DynamicSamplingExhausted: when this was round ``max_rounds`` and the batch is still not full
                (with ``partial_ok``: only when no informative group was found at all).
            ValueError: when the lengths disagree or a group has no rewards.

        """
        if self.enable:
            kept, kept_idx = filter_groups(groups, rewards_per_group, self.tol)
            keep = set(kept_idx)
            self._dropped_at += [_as_list(r, i)[0] for i, r in enumerate(rewards_per_group) if i not in keep]
        else:
            if len(groups) != len(rewards_per_group):
                raise ValueError(f"got {len(groups)} groups but rewards for {len(rewards_per_group)}")
            kept = list(groups)
        self.stats.rounds += 1
        self.stats.groups_seen += len(groups)
        self.stats.groups_kept += len(kept)
        self.stats.groups_dropped += len(groups) - len(kept)
        self._groups.extend(kept)
        if not self.full and self.stats.rounds >= self.max_rounds:
            if self.partial_ok and self._groups:
                self.exhausted = True
                return len(kept)
            s = self.stats
            raise DynamicSamplingExhausted(
                f"dynamic sampling: only {len(self._groups)} of {self.target_groups} groups have non-zero "
                "reward "
                f"variance after {s.rounds} generation rounds ({s.groups_seen} groups generated, "
                f"{s.groups_dropped} dropped as all-equal{self._dropped_summary()}); raise {self.config_key} "
                f"(now {self.max_rounds}), generate more prompts per round, or use easier/harder data"
                + self._dropped_hint()
            )
        return len(kept)

    def _dropped_summary(self) -> str:
        """``": 4 with every reward 0"`` / ``": 3 at 0, 1 at 1"`` for the dropped groups of this step."""
        if not self._dropped_at:
            return ""
        counts = collections.Counter(round(v, 6) for v in self._dropped_at)
        if len(counts) == 1:
            (value, n), = counts.items()
            return f": {'all' if n == len(self._dropped_at) else n} with every reward {value:g}"
        return ": " + ", ".join(f"{n} at {v:g}" for v, n in sorted(counts.items()))

    def _dropped_hint(self) -> str:
        """What to change when every dropped group sat at the same reward (e.g. all 0 at the first step)."""
        values = {round(v, 6) for v in self._dropped_at}
        if self._groups or len(values) != 1:
            return ""
        value = values.pop()
        if value <= 0:
            return (f". Every sample scored {value:g}: check that the prompt template asks for the answer "
                    "format the reward reads (`nemo-prorl score` on a few responses shows the status), or "
                    "start from a stronger base or easier data")
        return f". Every sample scored {value:g}: the data is too easy for this policy; use harder data"

    def pop_batch(self) -> tuple[list[T], DynamicSamplingStats]:
        """Take the first ``target_groups`` groups, discard the extra, and reset for the next step.

        Returns:
            ``(groups, stats)`` for this step.

        Raises:
            RuntimeError: when the buffer is not :attr:`ready` yet.

        """
        if not self.ready:
            raise RuntimeError(
                f"dynamic sampling buffer holds {len(self._groups)} of {self.target_groups} groups; "
                "add more first"
            )
        batch = self._groups[: self.target_groups]
        self.stats.groups_discarded = len(self._groups) - len(batch)
        self.stats.partial = int(len(batch) < self.target_groups)
        stats = self.stats
        self.exhausted = False
        self._groups = []
        self.stats = DynamicSamplingStats()
        self._dropped_at = []
        return batch, stats
