"""Entry points of plug-in packages, loaded the same way by every registry of named classes.

A plug-in package names its classes under an entry-point group (``nemo_prorl.rewards``,
``nemo_prorl.callbacks``, the backend groups); a registry loads them on its first lookup. A target that
cannot be imported raises :class:`ImportError` naming the entry point and its group (not an error deep
in importlib); a target of the wrong kind raises :class:`TypeError` naming the base class it must extend.
(``nemo_prorl.algorithms.registry`` keeps its own loop: the algorithms layer imports nothing else of the
package.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any


def load_entry_point(ep: EntryPoint, group: str) -> Any:
    """``ep.load()``; a failure is an :class:`ImportError` naming the entry point, target and ``group``."""
    try:
        return ep.load()
    except Exception as exc:  # a broken plug-in must name itself, not fail deep in importlib
        raise ImportError(f"cannot load entry point {ep.name!r} = {ep.value!r} of group {group!r}: "
                          f"{type(exc).__name__}: {exc}") from exc


def register_entry_point_classes(
    group: str, table: Mapping[str, type], base: type, register: Callable[[str], Callable[[type], type]]
) -> None:
    """Load every entry point of ``group`` not yet in ``table`` and register its class under its name.

    Args:
        group: the entry-point group.
        table: the registry's name -> class table (read only here).
        base: the class every target must subclass.
        register: the registry's decorator factory (``register_reward``), called as ``register(name)(cls)``.

    A target module that registered its class under the entry point's name while importing is fine.

    """
    for ep in entry_points(group=group):
        if ep.name in table:
            continue
        cls = load_entry_point(ep, group)
        if ep.name in table:  # the module registered it while importing
            continue
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise TypeError(f"entry point {ep.name!r} = {ep.value!r} of group {group!r} is {cls!r}, not a "
                            f"subclass of {base.__module__}.{base.__qualname__}")
        register(ep.name)(cls)
