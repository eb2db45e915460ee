"""``build_rollout_engine``: the one place that turns a :class:`RolloutConfig` into an engine.

The engine is built by the builder registered under ``rollout.backend`` (:mod:`nemo_prorl.rollout.registry`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from nemo_prorl.rollout.base import RolloutEngine
from nemo_prorl.rollout.config import RolloutConfig
from nemo_prorl.rollout.registry import get_rollout_backend

ModelSource = str | os.PathLike | tuple[Any, Mapping[str, torch.Tensor]]


def build_rollout_engine(
    config: RolloutConfig, model_dir_or_state: ModelSource, tokenizer: Any = None
) -> RolloutEngine:
    """Build the engine the config asks for: the builder registered under ``config.backend``.

    Args:
        config: the validated-here rollout config.
        model_dir_or_state: a local HF model directory, or ``(hf_config, hf_state_dict)`` -- a
            transformers ``PretrainedConfig`` and HF-named full tensors (e.g. converted from Megatron).
        tokenizer: HF tokenizer; default: loaded from the model directory (required with a state).

    Returns:
        An object satisfying :class:`~nemo_prorl.rollout.base.RolloutEngine`.

    Raises:
        ValueError: invalid config (named key; an unknown backend is a ``ConfigError`` listing the
            registered ones) or missing tokenizer.

    """
    config.validate()
    if not isinstance(model_dir_or_state, (str, os.PathLike)) and tokenizer is None:
        raise ValueError("build_rollout_engine: a tokenizer is required when building from a state dict")
    build = get_rollout_backend(config.backend)
    return build(config, model_dir_or_state, tokenizer)


def engine_limit_kwargs(config: RolloutConfig) -> dict[str, Any]:
    """The prompt/response limits every engine takes, from the config (for backend builders)."""
    return dict(
        max_prompt_tokens=config.max_prompt_tokens,
        max_response_tokens=config.max_response_tokens,
        overlong_prompt=config.overlong_prompt,
    )
