"""The rollout-backend registry: ``rollout.backend`` names a builder registered here.

A builder has the signature ``build(config, model_dir_or_state, tokenizer) -> RolloutEngine`` where
``config`` is the validated :class:`~nemo_prorl.rollout.config.RolloutConfig`, ``model_dir_or_state`` a
local HF model directory or ``(hf_config, hf_state_dict)``, and ``tokenizer`` the HF tokenizer (``None``
only with a directory: load it from there). The built-ins are ``hf`` (:mod:`nemo_prorl.rollout.hf_engine`)
and ``vllm`` (:mod:`nemo_prorl.rollout.vllm_engine`); other packages add builders through the
``nemo_prorl.rollout_backends`` entry-point group.

``placement`` tells the trainer where engines live: ``"rank0"`` -- one engine on global rank 0, the
other ranks wait (the transformers engine); ``"every_rank"`` -- one engine per rank, colocated with the
policy shard and driven collectively (vLLM's ``external_launcher``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from nemo_prorl.backend_registry import BackendRegistry

ENTRY_POINT_GROUP = "nemo_prorl.rollout_backends"
PLACEMENTS = ("rank0", "every_rank")

F = TypeVar("F", bound=Callable[..., Any])

ROLLOUT_BACKENDS = BackendRegistry(
    "rollout backend",
    ENTRY_POINT_GROUP,
    {"hf": "nemo_prorl.rollout.hf_engine", "vllm": "nemo_prorl.rollout.vllm_engine"},
)


def register_rollout_backend(name: str, *, placement: str = "rank0") -> Callable[[F], F]:
    """Decorator registering a rollout-engine builder under ``name`` (see the module docstring)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"rollout backend {name!r}: placement must be one of {PLACEMENTS}, "
                         f"got {placement!r}")
    return ROLLOUT_BACKENDS.register(name, placement=placement)


def registered_rollout_backends() -> list[str]:
    """Every rollout backend name (built-in, registered, entry point); imports no engine."""
    return ROLLOUT_BACKENDS.names()


def get_rollout_backend(name: str, key: str = "rollout.backend") -> Callable[..., Any]:
    """The builder registered under ``name``; ``ConfigError`` at ``key`` lists the known names."""
    return ROLLOUT_BACKENDS.get(name, key)


def rollout_placement(name: str, key: str = "rollout.backend") -> str:
    """``"rank0"`` or ``"every_rank"``: where the trainer puts engines of backend ``name``."""
    return ROLLOUT_BACKENDS.meta(name, key).get("placement", "rank0")
