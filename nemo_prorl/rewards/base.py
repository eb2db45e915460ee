"""Reward contract: ``RewardResult``, the ``Reward`` base class and the reward registry.

A reward is a class registered under its domain name with ``@register_reward("math")``; other packages
add rewards through the ``nemo_prorl.rewards`` entry-point group (``name = "pkg.module:Class"``).
Rewards never raise out of :meth:`Reward.score`: failures become a status, and ``score`` is 0.0 for
any status but ``ok`` (callers may apply a configured penalty instead).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from nemo_prorl.plugins import register_entry_point_classes
from nemo_prorl.schema import Problem

STATUSES: tuple[str, ...] = ("ok", "no_answer", "timeout", "error", "violation")


@dataclass
class RewardResult:
    """The outcome of scoring one response.

    Attributes:
        score: reward in [0, 1]; 0.0 unless ``status == "ok"``.
        status: one of :data:`STATUSES`.
        info: free-form details (extracted answer, tests passed, reason of an error...).

    """

    score: float
    status: str = "ok"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown reward status {self.status!r}; expected one of {STATUSES}")
        if self.status != "ok":
            self.score = 0.0


class Reward(abc.ABC):
    """A verifiable reward for one domain.

    Subclasses take their options as keyword arguments in ``__init__`` (from the rewards config).
    """

    #: registry name (the row's ``domain``)
    name: str = ""

    def validate(self, row: dict) -> list[Problem]:
        """Domain-specific checks of a row's ground truth beyond :mod:`nemo_prorl.schema`."""
        return []

    @abc.abstractmethod
    def score(self, response: str, row: dict) -> RewardResult:
        """Score ``response`` against the ground truth in ``row``. Must not raise."""


ENTRY_POINT_GROUP = "nemo_prorl.rewards"

_REGISTRY: dict[str, type[Reward]] = {}
_ENTRY_POINTS_LOADED = False


def register_reward(name: str):
    """Class decorator registering a :class:`Reward` subclass under ``name``."""

    def deco(cls: type[Reward]) -> type[Reward]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"reward {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_entry_points() -> None:
    """Register every ``nemo_prorl.rewards`` entry point once, at the first registry lookup.

    The entry point's name is the domain; its target is a :class:`Reward` subclass (a module whose
    ``@register_reward`` already registered it under that name is fine too).
    """
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    register_entry_point_classes(ENTRY_POINT_GROUP, _REGISTRY, Reward, register_reward)
    _ENTRY_POINTS_LOADED = True


def registered_rewards() -> dict[str, type[Reward]]:
    """Names -> classes of every registered reward (built-in and entry points)."""
    _load_entry_points()
    return dict(_REGISTRY)


def get_reward_class(name: str) -> type[Reward]:
    """Look up a reward class by name; raises ``KeyError`` naming the known rewards."""
    rewards = registered_rewards()
    if name not in rewards:
        raise KeyError(f"unknown reward {name!r}; registered: {', '.join(sorted(rewards)) or 'none'}")
    return rewards[name]
