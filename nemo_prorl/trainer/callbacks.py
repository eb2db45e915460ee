"""Trainer callbacks: a small protocol, a registry, and the ``nemo_prorl.callbacks`` entry-point group.

The trainer calls every configured callback at three points of :meth:`ProRLTrainer.fit`, on every rank,
in the order ``trainer.callbacks`` lists them:

==============================  ===================================================================
hook                            when, and what it gets
==============================  ===================================================================
``on_step_end(step, metrics)``  after each training step is logged; ``step`` is 1-based, ``metrics``
                                the step's record (``reward/generated_mean``, ``loss``, ``kl``, ...)
``on_validation(step, metrics)`` after each validation (``step`` 0 for the one before training);
                                ``metrics`` are the ``val/...`` values
``on_reset(step, cause)``       after a ProRL hard reset (reference and optimizer), with its cause
==============================  ===================================================================

Callbacks observe; they cannot change the run (``metrics`` is a copy). An exception in a callback stops
the run like any other error. A callback is a class registered under a name, built with no arguments::

    @register_callback("print_resets")
    class PrintResets(Callback):
        def on_reset(self, step, cause):
            print(step, cause)

and chosen by that name in the config (``trainer.callbacks: [print_resets]``), never by import path.
Packages add callbacks through the ``nemo_prorl.callbacks`` entry-point group
(``print_resets = "pkg.module:PrintResets"``), loaded at the first registry lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from nemo_prorl.plugins import register_entry_point_classes

ENTRY_POINT_GROUP = "nemo_prorl.callbacks"


class Callback:
    """Base class of trainer callbacks; every hook is a no-op unless overridden."""

    #: registry name
    name: str = ""

    def on_step_end(self, step: int, metrics: dict[str, Any]) -> None:
        """After training step ``step`` (1-based) was logged with ``metrics``."""

    def on_validation(self, step: int, metrics: dict[str, float]) -> None:
        """After a validation at ``step`` (0 = before training) gave ``metrics``."""

    def on_reset(self, step: int, cause: str) -> None:
        """After a hard reset (reference := policy, optimizer restarted) at ``step`` for ``cause``."""


C = TypeVar("C", bound=type[Callback])

_REGISTRY: dict[str, type[Callback]] = {}
_ENTRY_POINTS_LOADED = False


def register_callback(name: str) -> Callable[[C], C]:
    """Class decorator registering a :class:`Callback` subclass under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"callback name must be a non-empty string (got {name!r})")

    def deco(cls: C) -> C:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"callback {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    register_entry_point_classes(ENTRY_POINT_GROUP, _REGISTRY, Callback, register_callback)
    _ENTRY_POINTS_LOADED = True


def registered_callbacks() -> dict[str, type[Callback]]:
    """Names -> classes of every registered callback (decorated and entry points)."""
    _load_entry_points()
    return dict(_REGISTRY)


def build_callbacks(names: Sequence[str], key: str = "trainer.callbacks") -> list[Callback]:
    """Instantiate the callbacks ``names`` (in order).

    Raises:
        ValueError: naming ``key[i]`` and the registered callbacks when a name is unknown.

    """
    table = registered_callbacks()
    out = []
    for i, name in enumerate(names):
        if name not in table:
            raise ValueError(f"{key}[{i}]: unknown callback {name!r}; registered: "
                             f"{', '.join(sorted(table)) or 'none'} (a package adds one through the "
                             f"{ENTRY_POINT_GROUP} entry points)")
        out.append(table[name]())
    return out
