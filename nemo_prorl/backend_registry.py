"""Name -> implementation tables for engine backends (rollout engines, policy engines), loaded lazily.

A backend is found by the name a config gives (``rollout.backend: vllm``, ``policy.backend: megatron``)
in three places, in this order:

1. an entry registered in this process (``@register_rollout_backend(name)`` / ``@register_policy_backend``);
2. a built-in: the name maps to the module that registers it, imported only when that name is asked for,
   so listing or validating names never imports vLLM, transformers models or megatron-core;
3. an entry point of the table's group (``name = "pkg.module:obj"``): only the entry point of the asked
   name is loaded; its module may register ``obj`` itself, otherwise ``obj`` is registered under the
   entry point's name.

Configs name backends only through these tables, never by import path; an unknown name is a
:class:`~nemo_prorl.config_schema.ConfigError` naming the key and listing every known name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, TypeVar

from nemo_prorl.config_schema import ConfigError
from nemo_prorl.plugins import load_entry_point

F = TypeVar("F")


class BackendRegistry:
    """One table of named backends.

    Args:
        kind: what an entry is, for messages (``"rollout backend"``).
        group: the entry-point group plug-in packages register under.
        builtins: name -> module that registers that name when imported.

    """

    def __init__(self, kind: str, group: str, builtins: Mapping[str, str]) -> None:
        self.kind = kind
        self.group = group
        self._builtins = dict(builtins)
        self._table: dict[str, Any] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[F], F]:
        """Decorator registering ``obj`` under ``name`` with optional metadata (read back by :meth:`meta`)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string (got {name!r})")

        def deco(obj: F) -> F:
            if name in self._table and self._table[name] is not obj:
                old = getattr(self._table[name], "__qualname__", repr(self._table[name]))
                raise ValueError(f"{self.kind} {name!r} is already registered by {old}")
            self._table[name] = obj
            self._meta[name] = dict(meta)
            return obj

        return deco

    def _entry_points(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Every known name (registered, built-in, entry point), sorted; imports nothing."""
        return sorted(set(self._table) | set(self._builtins) | set(self._entry_points()))

    def check(self, name: Any, key: str) -> None:
        """Raise :class:`ConfigError` at ``key`` unless ``name`` is a known backend name."""
        known = self.names()
        if not isinstance(name, str) or name not in known:
            raise ConfigError(key, f"unknown {self.kind} {name!r}; registered: {', '.join(known) or 'none'} "
                                   f"(a plug-in package adds one under the {self.group!r} entry-point group)")

    def get(self, name: Any, key: str) -> Any:
        """The object registered under ``name``, importing its built-in module or entry point on first use.

        Raises:
            ConfigError: ``name`` is unknown (at ``key``), or its module did not register it.
            ImportError: the plug-in's entry point cannot be loaded (names the entry point).

        """
        self.check(name, key)
        if name not in self._table and name in self._builtins:
            importlib.import_module(self._builtins[name])
        if name not in self._table:
            ep = self._entry_points().get(name)
            if ep is not None:
                obj = load_entry_point(ep, self.group)
                if name not in self._table:  # the module did not register it itself
                    self.register(name)(obj)
        if name not in self._table:
            raise ConfigError(key, f"{self.kind} {name!r}: its module {self._builtins.get(name)!r} did not "
                                   f"register it")
        return self._table[name]

    def meta(self, name: str, key: str) -> dict[str, Any]:
        """The metadata given at registration of ``name`` (loads it like :meth:`get`)."""
        self.get(name, key)
        return dict(self._meta.get(name, {}))
