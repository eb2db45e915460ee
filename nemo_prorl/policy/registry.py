"""The policy-backend registry: ``policy.backend`` names the training engine registered here.

A policy backend is a callable ``build(model_dir, config) -> PolicyInterface`` (a class is fine): it
receives the local HF model directory the run starts from and the validated ``policy:`` block (a
:class:`~nemo_prorl.policy.megatron.config.MegatronPolicyConfig` whose ``temperature`` the trainer has set
to the rollout temperature) and returns an object satisfying
:class:`~nemo_prorl.policy.interface.PolicyInterface`. The built-in is ``megatron``
(:class:`~nemo_prorl.policy.megatron.engine.MegatronPolicy`, registered when its module is imported, which
happens only when that name is built); other packages add backends through the
``nemo_prorl.policy_backends`` entry-point group.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from nemo_prorl.backend_registry import BackendRegistry

ENTRY_POINT_GROUP = "nemo_prorl.policy_backends"

F = TypeVar("F", bound=Callable[..., Any])

POLICY_BACKENDS = BackendRegistry(
    "policy backend", ENTRY_POINT_GROUP, {"megatron": "nemo_prorl.policy.megatron.engine"}
)

#: the class of the ``policy:`` config block (module, name); imported when first asked for
_POLICY_CONFIG = ("nemo_prorl.policy.config", "MegatronPolicyConfig")


def policy_config_class() -> type:
    """The dataclass that validates the ``policy:`` block (``from_dict``, defaults).

    Every backend takes :class:`~nemo_prorl.policy.megatron.config.MegatronPolicyConfig` today (a plain
    dataclass that imports no megatron-core; plug-in backends receive it too). The trainer's config asks
    for it here, so the trainer package names no engine module.
    """
    module, name = _POLICY_CONFIG
    return getattr(importlib.import_module(module), name)


def register_policy_backend(name: str) -> Callable[[F], F]:
    """Decorator registering a policy engine (class or factory) under ``name``."""
    return POLICY_BACKENDS.register(name)


def registered_policy_backends() -> list[str]:
    """Every policy backend name (built-in, registered, entry point); imports no engine."""
    return POLICY_BACKENDS.names()


def get_policy_backend(name: str, key: str = "policy.backend") -> Callable[..., Any]:
    """The engine registered under ``name``; ``ConfigError`` at ``key`` lists the known names."""
    return POLICY_BACKENDS.get(name, key)


def build_policy(model_dir: str | Path, config: Any) -> Any:
    """Build the policy engine ``config.backend`` names from ``model_dir`` (collective under torchrun)."""
    return get_policy_backend(config.backend)(model_dir, config)
