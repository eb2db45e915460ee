"""Decorator registries for advantage estimators and policy losses.

Built-in entries register themselves when :mod:`nemo_prorl.algorithms` is imported. Other packages add
entries through the ``nemo_prorl.losses`` entry-point group (``name = "pkg.module:obj"``): loading the
group imports each target module, whose ``@register_policy_loss`` / ``@register_advantage_estimator``
decorators register it; a loaded object that did not register itself is registered as a policy loss
under the entry point's name. Configs name entries only through these registries, never by import path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, TypeVar

from nemo_prorl.algorithms.metric_reduction import check_reductions

F = TypeVar("F", bound=Callable[..., Any])

ENTRY_POINT_GROUP = "nemo_prorl.losses"

_ADVANTAGE_ESTIMATORS: dict[str, Callable[..., Any]] = {}
_POLICY_LOSSES: dict[str, Callable[..., Any]] = {}
#: name -> {metric: reduction kind} declared by each policy loss (see ``metric_reduction``)
_POLICY_LOSS_METRICS: dict[str, dict[str, str]] = {}
_ENTRY_POINTS_LOADED = False


def _register(table: dict[str, Callable[..., Any]], kind: str, name: str) -> Callable[[F], F]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string (got {name!r})")

    def deco(fn: F) -> F:
        if name in table and table[name] is not fn:
            raise ValueError(f"{kind} {name!r} is already registered by {table[name].__qualname__}")
        table[name] = fn
        return fn

    return deco


def register_advantage_estimator(name: str) -> Callable[[F], F]:
    """Decorator registering an advantage estimator under ``name``.

    The function has the signature ``fn(rewards: Tensor [B], group_ids: Tensor [B], cfg) -> Tensor [B]``
    where ``cfg`` is an :class:`~nemo_prorl.algorithms.config.AdvantageConfig`. Batch-level estimators
    also take the keywords ``num_tokens`` (``[B]`` response tokens per sample) and ``dp_group`` (the
    data-parallel group holding the rest of the batch); ``compute_advantages`` passes them only when set.
    """
    return _register(_ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def register_policy_loss(
    name: str, metric_reductions: Mapping[str, str] | None = None
) -> Callable[[F], F]:
    """Decorator registering a per-token policy loss under ``name``.

    The function has the signature ``fn(logprobs, old_logprobs, advantages, mask, cfg) ->
    (loss_mat [B, T], metrics: dict[str, Tensor])``; the caller aggregates ``loss_mat`` with
    :func:`~nemo_prorl.algorithms.policy_loss.aggregate_loss`.

    Args:
        name: the registry name (``algorithm.loss.name``).
        metric_reductions: how each of its metrics reduces over micro-batches and ranks,
            ``{name: "sum" | "mean" | "max" | "min"}`` (:mod:`~nemo_prorl.algorithms.metric_reduction`);
            metrics it does not name are token means (``"mean"``).

    """
    declared = check_reductions(metric_reductions or {}, f"policy loss {name!r}")
    register = _register(_POLICY_LOSSES, "policy loss", name)

    def deco(fn: F) -> F:
        register(fn)
        _POLICY_LOSS_METRICS[name] = declared
        return fn

    return deco


def policy_loss_metric_reductions(name: str) -> dict[str, str]:
    """The metric reductions policy loss ``name`` declared (empty: all its metrics are token means)."""
    get_policy_loss(name)
    return dict(_POLICY_LOSS_METRICS.get(name, {}))


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plug-in must name itself, not fail deep in importlib
            raise ImportError(
                f"cannot load entry point {ep.name!r} = {ep.value!r} of group {ENTRY_POINT_GROUP!r}: {exc}"
            ) from exc
        known = set(map(id, _POLICY_LOSSES.values())) | set(map(id, _ADVANTAGE_ESTIMATORS.values()))
        if id(obj) not in known and ep.name not in _POLICY_LOSSES:
            _POLICY_LOSSES[ep.name] = obj
    _ENTRY_POINTS_LOADED = True


def _builtins() -> None:
    # Importing the modules runs their registration decorators.
    from nemo_prorl.algorithms import advantages, policy_loss  # noqa: F401


def registered_advantage_estimators() -> dict[str, Callable[..., Any]]:
    """Names -> functions of every advantage estimator (built-in and entry points)."""
    _builtins()
    _load_entry_points()
    return dict(_ADVANTAGE_ESTIMATORS)


def registered_policy_losses() -> dict[str, Callable[..., Any]]:
    """Names -> functions of every policy loss (built-in and entry points)."""
    _builtins()
    _load_entry_points()
    return dict(_POLICY_LOSSES)


def get_advantage_estimator(name: str) -> Callable[..., Any]:
    """Look up an advantage estimator; ``KeyError`` names the registered ones when ``name`` is unknown."""
    table = registered_advantage_estimators()
    if name not in table:
        raise KeyError(
            f"unknown advantage estimator {name!r}; registered: {', '.join(sorted(table)) or 'none'}"
        )
    return table[name]


def get_policy_loss(name: str) -> Callable[..., Any]:
    """Look up a policy loss; ``KeyError`` names the registered ones when ``name`` is unknown."""
    table = registered_policy_losses()
    if name not in table:
        raise KeyError(f"unknown policy loss {name!r}; registered: {', '.join(sorted(table)) or 'none'}")
    return table[name]
