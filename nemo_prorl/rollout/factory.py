"""``build_rollout_engine``: the one place that turns a :class:`RolloutConfig` into an engine."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nemo_prorl.rollout.base import RolloutEngine
from nemo_prorl.rollout.config import RolloutConfig

ModelSource = str | os.PathLike | tuple[Any, Mapping[str, torch.Tensor]]


def build_rollout_engine(
    config: RolloutConfig, model_dir_or_state: ModelSource, tokenizer: Any = None
) -> RolloutEngine:
    """Build the engine the config asks for.

    Args:
        config: the validated-here rollout config.
        model_dir_or_state: a local HF model directory, or ``(hf_config, hf_state_dict)`` -- a
            transformers ``PretrainedConfig`` and HF-named full tensors (e.g. converted from Megatron).
        tokenizer: HF tokenizer; default: loaded from the model directory (required with a state).

    Returns:
        An object satisfying :class:`~nemo_prorl.rollout.base.RolloutEngine`.

    Raises:
        ValueError: invalid config (named key) or missing tokenizer.

    """
    config.validate()
    common = dict(
        max_prompt_tokens=config.max_prompt_tokens,
        max_response_tokens=config.max_response_tokens,
        overlong_prompt=config.overlong_prompt,
    )
    is_dir = isinstance(model_dir_or_state, (str, os.PathLike))
    if not is_dir and tokenizer is None:
        raise ValueError("build_rollout_engine: a tokenizer is required when building from a state dict")
    if config.backend == "hf":
        from nemo_prorl.rollout.hf_engine import HFRolloutEngine

        dtype = "float32" if config.dtype == "auto" else config.dtype
        hf_kwargs = dict(common, max_batch_size=config.max_batch_size)
        if is_dir:
            return HFRolloutEngine.from_pretrained(
                model_dir_or_state,
                tokenizer,
                dtype=dtype,
                attn_implementation=config.attn_implementation,
                **hf_kwargs,
            )
        hf_config, state = model_dir_or_state
        return HFRolloutEngine.from_state_dict(
            hf_config,
            state,
            tokenizer,
            dtype=dtype,
            attn_implementation=config.attn_implementation,
            **hf_kwargs,
        )

    from nemo_prorl.rollout.vllm_engine import VLLMRolloutEngine

    vllm_kwargs: dict[str, Any] = dict(
        common,
        tensor_parallel_size=config.tensor_parallel_size,
        gpu_memory_utilization=config.gpu_memory_utilization,
        enforce_eager=config.enforce_eager,
        enable_sleep_mode=config.enable_sleep_mode,
        dtype=config.dtype,
        distributed_executor_backend=config.distributed_executor_backend,
        max_model_len=config.max_model_len,
        logprobs_mode=config.logprobs_mode,
        seed=config.seed if config.seed is not None else 0,
    )
    if is_dir:
        return VLLMRolloutEngine(model_dir_or_state, tokenizer, **vllm_kwargs)
    # vLLM builds from a directory: write config + tokenizer only (no weights), start from dummy
    # weights and load the given tensors in place.
    hf_config, state = model_dir_or_state
    workdir = Path(tempfile.mkdtemp(prefix="nemo_prorl_vllm_"))
    (workdir / "config.json").write_text(json.dumps(hf_config.to_dict()), encoding="utf-8")
    tokenizer.save_pretrained(str(workdir))
    return VLLMRolloutEngine(workdir, tokenizer, init_state_dict=state, **vllm_kwargs)
